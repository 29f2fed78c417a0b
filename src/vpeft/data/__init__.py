"""Data: validation and preparation of VTAB-1K tasks into Parquet shards (see :mod:`vpeft.data.vtab`)."""
