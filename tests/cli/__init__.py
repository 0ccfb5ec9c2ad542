"""The `voicechat` command-line client against a running service."""
