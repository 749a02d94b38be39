"""Writing outputs so that none is ever seen half-written: the output folder of a command, and the datasets of the builds."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TextIO

if TYPE_CHECKING:
    import pyarrow

ROW_GROUP = 2048  # rows per parquet row group


TEMP_PREFIX = ".tmp-"  # an output is written as .tmp-NAME beside NAME (hidden, same extension), then renamed


class OutputFolder:
    """The output folder of a command, which owns the files named in ``owned`` (its one list).

    Every output is written under a temporary name (``file(name)`` gives it) and put in place
    only when the whole ``with`` block succeeds, in the order of ``owned``: a command lists its
    report last, so a folder with a report holds a complete set. On success the earlier report
    is removed first, the new files are renamed into place, and then every owned file an earlier
    run left that this one did not write (``sft_val.parquet`` after a rebuild without a split)
    is removed and reported: no mix of two runs. On an error or Ctrl-C the temporary files are
    removed and the folder is left as it was, and an OSError while writing a file (a full disk)
    is raised again naming that file. Temporary files a killed run left (``.tmp-NAME`` of an
    owned NAME) are removed on entering. Other files in the folder are never touched. ``file``
    refuses a name missing from ``owned``: a new output is declared in the list or the command
    fails, so the rule covers it without further code.
    """

    def __init__(self, path: str | os.PathLike, owned: Sequence[str]):
        self.path = os.fspath(path) or "."
        self.owned = tuple(owned)
        self.written: list[str] = []
        self.stale: list[str] = []

    def _temp(self, name: str) -> str:
        return os.path.join(self.path, TEMP_PREFIX + name)

    def __enter__(self) -> "OutputFolder":
        os.makedirs(self.path, exist_ok=True)
        for name in self.owned:
            if os.path.lexists(self._temp(name)):
                os.remove(self._temp(name))
        return self

    def file(self, name: str) -> str:
        """The (temporary) path to write the owned output ``name`` to."""
        if name not in self.owned:
            raise ValueError(f"{name!r} is not among the outputs this command owns ({', '.join(self.owned)}); declare it")
        self.written.append(name)
        return self._temp(name)

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            for name in self.written:
                if os.path.lexists(self._temp(name)):
                    os.remove(self._temp(name))
            if isinstance(exc, OSError) and self.written:
                target = os.path.join(self.path, self.written[-1])
                raise OSError(f"{target}: cannot write: {exc.strerror or exc}") from exc
            return
        report = os.path.join(self.path, self.owned[-1])
        if len(self.written) > 1 and os.path.lexists(report):
            os.remove(report)
        for name in self.owned:
            target = os.path.join(self.path, name)
            if name in self.written:
                os.replace(self._temp(name), target)
            elif os.path.lexists(target):
                os.remove(target)
                self.stale.append(name)
        if self.stale:
            print(f"{self.path}: removed {', '.join(self.stale)} left by an earlier run (not part of this one)", file=sys.stderr)


@contextmanager
def output_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """One output text file, opened for writing and put in place whole or not at all (the
    ``OutputFolder`` rule for a folder owning just that file)."""
    folder, name = os.path.split(os.fspath(path))
    with OutputFolder(folder, (name,)) as out, open(out.file(name), "w", encoding="utf-8") as fh:
        yield fh


def write_parquet(rows: list[dict], path: str, to_table: Callable[[list[dict]], "pyarrow.Table"] | None = None) -> None:
    """Write rows to a parquet file (an ``OutputFolder`` file: it is put in place only when complete).

    Without ``to_table`` Arrow infers the types from all rows at once. With it (a converter to a
    fixed schema, such as ``sft_table``), rows are converted one row group at a time, so Arrow's
    memory stays at one group's size instead of a copy of the whole dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if to_table is None:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=ROW_GROUP)
    else:
        tables = (to_table(rows[start : start + ROW_GROUP]) for start in range(0, len(rows) or 1, ROW_GROUP))
        first = next(tables)
        with pq.ParquetWriter(path, first.schema) as writer:
            writer.write_table(first)
            for table in tables:
                writer.write_table(table)


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
