"""Shared domain: job tables and states, settings, stored files; used by the API and the worker."""
