"""Reader module 'npy' (being written: issue 3)."""
