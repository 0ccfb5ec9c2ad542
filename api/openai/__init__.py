"""OpenAI's API shapes over the same jobs, for the official SDKs with `base_url` pointed here."""
