"""Package placeholder; its modules land in a later commit."""
