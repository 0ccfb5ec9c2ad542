"""The voice chat page and the documentation: /, /docs, and the mkdocs site."""
