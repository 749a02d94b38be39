"""Writing the datasets of the builds."""

from __future__ import annotations

import os


def write_parquet(rows: list[dict], path: str) -> None:
    """Write rows to a parquet file, atomically (a crash never leaves half a dataset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
