"""Output tables written as they are made: one file, or one file per input shard in a folder.

A sink writes into a temporary file or folder next to its target and puts it in place only when
`close()` is called, so an interrupted inference never leaves an output that looks complete.
"""

import contextlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sequifier.files import atomic_path


class _TableFile:
    def __init__(self, path: Path, fmt: str, names: list):
        self.path, self.fmt, self.names, self.writer = path, fmt, names, None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            if self.fmt == "parquet":
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="lz4")
            else:
                self.writer = pacsv.CSVWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no rows: the columns only
            self.write(pa.table({name: pa.array([], pa.string()) for name in self.names}))
        self.writer.close()


class Sink:
    """Tables in, one output out: `{target}.{fmt}`, or with shards `{target}/{shard}.{fmt}`."""

    def __init__(self, target: Path, fmt: str, names: list, sharded: bool, stack: contextlib.ExitStack):
        self.fmt, self.names, self.sharded = fmt, names, sharded
        self.target = target if sharded else target.with_name(f"{target.name}.{fmt}")
        self.tmp = stack.enter_context(atomic_path(self.target))
        if sharded:
            self.tmp.mkdir(parents=True)
        self.file = None if sharded else _TableFile(self.tmp, fmt, names)

    def shard(self, name: str) -> None:
        """With shards: the tables that follow go to the file of input shard `name`."""
        if self.sharded:
            if self.file is not None:
                self.file.close()
            self.file = _TableFile(self.tmp / f"{name}.{self.fmt}", self.fmt, self.names)

    def write(self, columns: dict) -> None:
        self.file.write(pa.table(columns))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
