"""Running the service: the launcher, compose, settings, metrics and logs, the layers' rules."""
