"""The shared layer (tables, job states, settings, stores): api and worker import it, never back."""
