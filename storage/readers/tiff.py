"""Reader module 'tiff' (being written: issue 3)."""
