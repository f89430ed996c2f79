"""Writers: export cube stores to files other tools read (TIFF, NPY, PNG, JPEG).

:func:`cubepipe.storage.export.export` is the entry point. Modules:

- :mod:`.floats`: exact float ``.tif``/``.npy`` exports (dtype rules);
- :mod:`.tiff`, :mod:`.npy`: the file layouts, streamed by :mod:`._stream`;
- :mod:`.scaling`: ``--scale`` ranges (minmax, percentile, fixed) and the integer codes;
- :mod:`.scaled`: PNG/JPEG previews with their sidecars; :mod:`.image`: Pillow I/O;
- :mod:`._staging`: temporary names renamed into place only when complete.
"""
