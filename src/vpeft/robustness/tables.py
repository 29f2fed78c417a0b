"""The robustness study's table schemas, shared by the step that writes them and the report that
reads them (pyarrow only: the report imports this without loading torch)."""
from __future__ import annotations

import pyarrow as pa

__all__ = ["WISE_RUN_SCHEMA"]

# One WiSE-FT curve of one final run (layout.WISE_TABLE): top-1 per mixing coefficient and
# evaluation set (the ID test set, layout.WISE_ID_SET, and every shift).
WISE_RUN_SCHEMA = pa.schema([("alpha", pa.float64()), ("eval_set", pa.string()),
                             ("top1", pa.float64()), ("num_images", pa.int64()),
                             ("num_classes_scored", pa.int64())])
