"""Encodings of cube variables (being written: issue 3)."""
