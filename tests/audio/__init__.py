"""Audio in: the WAV validator, the normaliser, the compressed formats clients send."""
