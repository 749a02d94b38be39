"""Writing the datasets of the builds."""

from __future__ import annotations

import os


ROW_GROUP = 2048  # rows per parquet row group


def write_parquet(rows: list[dict], path: str, schema: "pyarrow.Schema | None" = None) -> None:
    """Write rows to a parquet file, atomically (a crash never leaves half a dataset).

    Without ``schema`` Arrow infers it from all rows at once. With it, rows are converted one
    row group at a time, so Arrow's memory stays at one group's size (and fresh pages are not
    faulted in for a copy of the whole dataset).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    if schema is None:
        pq.write_table(pa.Table.from_pylist(rows), tmp, row_group_size=ROW_GROUP)
    else:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(rows), ROW_GROUP):
                writer.write_table(pa.Table.from_pylist(rows[start : start + ROW_GROUP], schema=schema))
    os.replace(tmp, path)


def sft_schema() -> "pyarrow.Schema":
    """The SFT rows: chat ``messages`` (role, content) as verl's MultiTurnSFTDataset reads them, and ``user_id``."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([("messages", pa.list_(message)), ("user_id", pa.string())])
