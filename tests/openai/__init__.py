"""The OpenAI-compatible routes and their bounded wait."""
