"""How long data lives: retention's purges and erasing a job."""
