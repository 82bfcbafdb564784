"""The maml example (see README.md)."""
