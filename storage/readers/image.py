"""Reader module 'image' (being written: issue 3)."""
