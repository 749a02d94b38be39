"""Writing the datasets of the builds, into an output folder the build owns."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

if TYPE_CHECKING:
    import pyarrow

ROW_GROUP = 2048  # rows per parquet row group


class OutputFolder:
    """The output folder of a build, which owns the files named in ``owned`` (the build's one list).

    On entering, every owned file an earlier build left there is removed (with the temporary
    file of an interrupted write), before anything new is written: a file this build does not
    write again (``sft_val.parquet`` after a rebuild without a split, say) cannot survive to be
    taken for part of the new set, and a build that fails half-way leaves no mix of old and new
    files (``report.json`` is written last but the plot, so its absence marks an incomplete
    build). Other files in the folder are left alone. Every write goes through ``file(name)``,
    which refuses a name missing from ``owned``: a new output is declared in the list or the
    build fails, so the rule covers it without further code.
    """

    def __init__(self, path: str, owned: Sequence[str]):
        self.path = path
        self.owned = tuple(owned)
        self.earlier: list[str] = []
        self.written: list[str] = []

    def __enter__(self) -> "OutputFolder":
        os.makedirs(self.path, exist_ok=True)
        for name in self.owned:
            for leftover in (name, f"{name}.tmp"):
                target = os.path.join(self.path, leftover)
                if os.path.lexists(target):
                    os.remove(target)
                    if leftover == name:
                        self.earlier.append(name)
        return self

    def file(self, name: str) -> str:
        """The path to write the owned output ``name`` to."""
        if name not in self.owned:
            raise ValueError(f"{name!r} is not among the outputs this build owns ({', '.join(self.owned)}); declare it")
        self.written.append(name)
        return os.path.join(self.path, name)

    @property
    def stale(self) -> list[str]:
        """Owned files an earlier build left that this one did not write again (now removed)."""
        return [name for name in self.earlier if name not in self.written]

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None and self.stale:
            print(f"{self.path}: removed {', '.join(self.stale)} left by an earlier build (not part of this one)", file=sys.stderr)


def write_parquet(rows: list[dict], path: str, to_table: Callable[[list[dict]], "pyarrow.Table"] | None = None) -> None:
    """Write rows to a parquet file, atomically (a crash never leaves half a dataset).

    Without ``to_table`` Arrow infers the types from all rows at once. With it (a converter to a
    fixed schema, such as ``sft_table``), rows are converted one row group at a time, so Arrow's
    memory stays at one group's size instead of a copy of the whole dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    if to_table is None:
        pq.write_table(pa.Table.from_pylist(rows), tmp, row_group_size=ROW_GROUP)
    else:
        tables = (to_table(rows[start : start + ROW_GROUP]) for start in range(0, len(rows) or 1, ROW_GROUP))
        first = next(tables)
        with pq.ParquetWriter(tmp, first.schema) as writer:
            writer.write_table(first)
            for table in tables:
                writer.write_table(table)
    os.replace(tmp, path)


def sft_table(rows: list[dict]) -> "pyarrow.Table":
    """SFT rows ({messages: [{role, content}, ...], user_id}) as the Arrow table verl's
    MultiTurnSFTDataset reads: messages list<struct<role: string, content: string>>, user_id string.

    Built from Arrow buffers (offsets and UTF-8 bytes), because ``pa.array`` on Python lists
    imports pandas (0.2 s) just to check that they are not pandas objects.
    """
    import pyarrow as pa

    messages = [m for row in rows for m in row["messages"]]
    struct = pa.StructArray.from_arrays([_utf8(m["role"] for m in messages), _utf8(m["content"] for m in messages)], names=["role", "content"])
    lists = pa.ListArray.from_arrays(_offsets([len(row["messages"]) for row in rows]), struct)
    return pa.Table.from_arrays([lists, _utf8(row["user_id"] for row in rows)], names=["messages", "user_id"])


def _offsets(lengths: list[int]) -> "pyarrow.Array":
    """The int32 offsets 0, l0, l0 + l1, ... of a list or string array with values of these lengths."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"a row group holds {offsets[-1]} values or bytes; Arrow's 32-bit offsets allow under 2**31")
    return pa.Array.from_buffers(pa.int32(), len(offsets), [None, pa.py_buffer(offsets.astype(np.int32))])


def _utf8(values: Iterable[str]) -> "pyarrow.Array":
    """A string array of ``values`` (str)."""
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = _offsets([len(b) for b in encoded])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, offsets.buffers()[1], pa.py_buffer(b"".join(encoded))])
