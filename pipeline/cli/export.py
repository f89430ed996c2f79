"""``cubepipe export`` (being written: issue 3)."""
