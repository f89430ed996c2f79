"""Reader module 'video' (being written: issue 3)."""
