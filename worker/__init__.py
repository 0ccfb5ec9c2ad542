"""The GPU-pinned Celery worker: tasks, the whisper → LLM → TTS pipeline, and its engines."""
