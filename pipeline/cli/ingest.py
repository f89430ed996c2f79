"""``cubepipe ingest`` (being written: issue 3)."""
