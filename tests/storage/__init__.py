"""The file stores (directory and database) and storage shared across hosts."""
