"""Export: cube stores -> files (being written: issue 3)."""
