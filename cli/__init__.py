"""`voicechat`: a command-line client of the service's public HTTP API (nothing else imported)."""
