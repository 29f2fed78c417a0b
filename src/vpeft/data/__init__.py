"""Data: reading datasets as users hold them and preparing them into Parquet shards.

- :mod:`vpeft.data.vtab`: the VTAB-1K tasks; checking and preparing a task in the VTAB-1K layout.
- :mod:`vpeft.data.listfile`: ``<relpath> <label>`` list files (parsing one, path rules).
- :mod:`vpeft.data.decode`: strict image decoding, RGB conversion and resizing.
- :mod:`vpeft.data.shards`: the prepared format (Parquet shards, manifest, test labels), written and read.
- :mod:`vpeft.data.errors`: :class:`~vpeft.data.errors.DataError` and collected error reporting.
- :mod:`vpeft.data.formats`: the dataset formats (one module each), selected by a source block's
  ``format:``; their readers live in :mod:`vpeft.data.folder` and :mod:`vpeft.data.cifar`.
- :mod:`vpeft.data.manyshot`: many-shot datasets, turned into VTAB-1K-layout views and prepared
  the same way.
- :mod:`vpeft.data.catalog`: the demo's synthetic tasks (a study's catalogue is its kind's,
  :mod:`vpeft.kinds`; the demo's generators live in :mod:`vpeft.demo`).
"""
