"""Reader module 'envi' (being written: issue 3)."""
