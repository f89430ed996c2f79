"""Writers: export cube stores to files other tools read (TIFF, NPY, PNG, JPEG)."""
