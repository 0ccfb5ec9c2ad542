"""Who may call, and how much: API keys, Host and Origin checks, limits, held requests."""
