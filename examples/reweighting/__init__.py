"""The reweighting example (see README.md)."""
