"""Ingest: inputs -> cube stores (being written: issue 3)."""
