"""The three_level example (see README.md)."""
