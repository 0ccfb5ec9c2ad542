"""The engines on their real libraries, the Jetson image, and the recognisers' languages."""
