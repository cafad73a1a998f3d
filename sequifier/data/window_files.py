"""The window files: written by preprocess, read by training and inference, in one module.

A window table is the wide format: one row per (window, column) with sequenceId, subsequenceId,
startItemPosition, lastItemPosition, positionStep, contextSlots, inputCol and the values W..0
(oldest item first). lastItemPosition is the itemPosition of the window's last item (the one a
prediction is about), positionStep the step between its last two items (windows.py). contextSlots
counts the leading slots that are padding or items of earlier splits: context that is never a
target of the window's own split. The pt format stores the same windows as one tensor per
column, [windows, W + 1]. Files are parquet or csv (one merged file or a folder of shards) or a
folder of pt shards; each carries the fingerprint of its metadata (fingerprints.py).

Reading gives chunks: a dict of one tensor per column, [windows, seq_length + 1] (categorical
ids as int32, real values as float32), plus `n_pad`, the number of leading padding slots of each
window, and `n_context`, the number of leading slots that are padding or items of earlier splits
(the file's contextSlots, less the slots cut off by a shorter seq_length): only the slots from
there on are targets of the window's own split.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sequifier.data import fingerprints
from sequifier.data.columns import (
    CONTEXT,
    FINGERPRINT,
    INPUT_COLUMN,
    LAST,
    SEQUENCE,
    START,
    STEP,
    SUBSEQUENCE,
)
from sequifier.data.streams import rechunk, write_stream
from sequifier.data.windows import Windows, slot_rows, window_positions
from sequifier.errors import DataError
from sequifier.files import torch_save

HEADER = (SEQUENCE, SUBSEQUENCE, START, LAST, STEP, CONTEXT, INPUT_COLUMN)  # the columns before the values
ROW_GROUP_WINDOWS = 8192
FLOAT32_EXACT_IDS = 1 << 24
CHUNK_WINDOWS = 8192
PAD = "n_pad"
SPLIT_START = "n_context"
IDS = "ids"  # with read_chunks(ids=True): {IDENTITY column: numpy array}
IDENTITY = (SEQUENCE, SUBSEQUENCE, START, LAST, STEP)


# --- writing -------------------------------------------------------------------------------


def value_columns(seq_length: int) -> list[str]:
    return [str(i) for i in range(seq_length, -1, -1)]


def value_type(metadata) -> pa.DataType:
    """One type for the value columns (of a `Metadata`'s data): int32 for ids only, else a float
    that holds ids exactly."""
    if not metadata.real_columns:
        return pa.int32()
    ids_fit = max(metadata.n_classes.values(), default=0) <= FLOAT32_EXACT_IDS
    return pa.float32() if metadata.normalize_real_columns and ids_fit else pa.float64()


def value_matrix(encoded: dict, dtype: pa.DataType) -> np.ndarray:
    """The encoded columns side by side, [rows + 1, columns], with a last row of padding (0)."""
    values = next(iter(encoded.values()))
    matrix = np.zeros((len(values) + 1, len(encoded)), dtype=dtype.to_pandas_dtype())
    for c, column in enumerate(encoded.values()):
        matrix[:-1, c] = column
    return matrix


def window_table(
    sequence_ids: pa.Array,
    positions: np.ndarray,
    seq_start: np.ndarray,
    matrix: np.ndarray,
    names: list,
    windows: Windows,
    seq_length: int,
) -> pa.Table:
    """The wide table of `windows`: for each window one row per column (of `value_matrix`)."""
    n_columns, n_windows = len(names), len(windows)
    rows = slot_rows(seq_start, windows, seq_length, padding_row=len(matrix) - 1)
    stacked = matrix[rows].reshape(seq_length + 1, n_windows * n_columns)
    input_col = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(np.arange(n_columns, dtype=np.int32), n_windows)), pa.array(names)
    ).cast(pa.string())
    start, last, step = window_positions(positions, seq_start, windows, seq_length)
    arrays = [
        sequence_ids.take(pa.array(np.repeat(windows.sequence, n_columns))),
        pa.array(np.repeat(windows.subsequence, n_columns)),
        *(pa.array(np.repeat(found, n_columns)) for found in (start, last, step)),
        pa.array(np.repeat(windows.context.astype(np.int32), n_columns)),
        input_col,
        *(pa.array(row) for row in stacked),
    ]
    return pa.table(arrays, names=[*HEADER, *value_columns(seq_length)])


def _parquet_options(schema: pa.Schema) -> dict:
    """lz4; ids dictionary-encoded; float values byte-stream-split (dictionaries of floats are
    slow and gain nothing); statistics for the window ids only."""
    values = schema.names[len(HEADER) :]
    options = {"compression": "lz4", "write_statistics": list(HEADER)}
    if pa.types.is_integer(schema.field(values[0]).type):
        return {**options, "use_dictionary": True}
    return {
        **options,
        "use_dictionary": [SEQUENCE, CONTEXT, INPUT_COLUMN],
        "column_encoding": {name: "BYTE_STREAM_SPLIT" for name in values},
    }


def _write_parquet(path: Path, tables, rows_per_group: int, fingerprint: str) -> None:
    def open_writer(schema):
        schema = schema.with_metadata({fingerprints.PARQUET_KEY: fingerprint.encode()})
        return pq.ParquetWriter(path, schema, **_parquet_options(schema))

    write_stream(rechunk(tables, rows_per_group), open_writer, row_group_size=rows_per_group)


def _write_csv(path: Path, tables, fingerprint: str) -> None:
    marked = (t.append_column(FINGERPRINT, pa.array(np.full(t.num_rows, fingerprint))) for t in tables)
    write_stream(rechunk(marked, ROW_GROUP_WINDOWS * 16), lambda schema: pacsv.CSVWriter(path, schema))


def to_tensors(table: pa.Table, columns: list[str], kinds: dict, fingerprint: str) -> dict:
    """The pt form of a window table: metadata tensors and one [windows, W + 1] tensor per column."""
    import torch

    n_columns = len(columns)
    values = np.stack([table.column(name).to_numpy() for name in table.column_names[len(HEADER) :]], axis=1)
    ids = table.column(SEQUENCE).to_numpy(zero_copy_only=False)[::n_columns]
    tensors = {}
    for c, name in enumerate(columns):
        block = values[c::n_columns]
        tensors[name] = torch.from_numpy(
            block.astype(np.int64) if kinds[name] == "categorical" else np.ascontiguousarray(block)
        )
    per_window = {
        name: torch.from_numpy(table.column(name).to_numpy()[::n_columns].copy())
        for name in (SUBSEQUENCE, START, LAST, STEP, CONTEXT)
    }
    return {
        SEQUENCE: torch.from_numpy(ids.astype(np.int64)) if ids.dtype.kind in "iu" else ids.tolist(),
        **per_window,
        "columns": list(columns),
        "values": tensors,
        fingerprints.PT_KEY: fingerprint,
    }


def write_windows(target: Path, tables, fmt: str, merged: bool, metadata, per_file: int):
    """Write a stream of window tables as one file or as a folder of shards (`target` is new),
    marked with the fingerprint of the `Metadata` they were written with."""
    columns, kinds, fingerprint = list(metadata.columns), metadata.column_types, metadata.fingerprint
    n_columns = len(columns)
    if merged:
        if fmt == "parquet":
            _write_parquet(target, tables, ROW_GROUP_WINDOWS * n_columns, fingerprint)
        else:
            _write_csv(target, tables, fingerprint)
        return
    target.mkdir(parents=True)
    for i, table in enumerate(rechunk(tables, per_file * n_columns)):
        shard = target / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            _write_parquet(shard, [table], ROW_GROUP_WINDOWS * n_columns, fingerprint)
        elif fmt == "csv":
            _write_csv(shard, [table], fingerprint)
        else:
            torch_save(to_tensors(table, columns, kinds, fingerprint), shard)


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSource:
    """Where windows are and how to read them: every stored column (metadata order) and the ones kept."""

    path: Path
    fmt: str
    columns: tuple
    kinds: dict
    n_classes: dict
    keep: tuple
    seq_length: int
    width: int | None = None  # the stored windows' W (metadata seq_length): checked against the files
    fingerprint: str | None = None  # of the metadata: checked against the files'
    metadata_name: str = "the metadata"  # the metadata file (or model) in messages
    remedy: str = "read them with the metadata they were written with, or preprocess again"

    @classmethod
    def of(
        cls, metadata, path: Path, fmt: str | None, keep, seq_length: int, name: str, **remedy
    ) -> "WindowSource":
        """The windows at `path` as preprocess wrote them with `metadata` (fmt None: its write
        format; `name`: where the metadata is, for messages; `remedy`: what to do when the windows
        are of other metadata), read for the columns `keep` and `seq_length` items before each last one."""
        return cls(
            path, fmt or metadata.write_format, tuple(metadata.columns), metadata.column_types,
            metadata.n_classes, tuple(keep), seq_length, metadata.seq_length, metadata.fingerprint, name,
            **remedy,
        )  # fmt: skip

    def files(self) -> list:
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix == f".{self.fmt}" and p.is_file())
            if not files:
                raise DataError(f"{self.path}: no .{self.fmt} files in this folder of windows")
            return files
        if not self.path.is_file():
            raise DataError(f"{self.path}: windows not found; run `sequifier preprocess` first")
        if self.path.suffix != f".{self.fmt}":
            raise DataError(
                f"{self.path}: read_format is {self.fmt}, but the file is '{self.path.suffix}'; set "
                "read_format to the format preprocess wrote (null takes the metadata's)"
            )
        return [self.path]


def _numpy_chunk(source: WindowSource, file: Path, table: pa.Table, ids: bool, cut: int) -> dict:
    """A wide table (rows window-major, column-minor) -> {column: [windows, S + 1]} and n_pad."""
    n_columns = len(source.columns)
    if table.num_rows % n_columns:
        raise DataError(f"{file}: {table.num_rows} rows are not whole windows of {n_columns} columns")
    if table.num_rows:
        head = table.column(INPUT_COLUMN).slice(0, n_columns).cast(pa.string()).to_pylist()
        if head != list(source.columns):
            held = list(dict.fromkeys(head))  # a window's rows, up to the first repeated column
            raise DataError(
                f"{file}: windows hold the columns {held}, but the metadata lists {list(source.columns)}; "
                "the metadata file does not match the data"
            )
    values = np.stack([table.column(name).to_numpy() for name in value_columns(source.seq_length)], axis=1)
    blocks = {name: values[c::n_columns] for c, name in enumerate(source.columns)}
    context = table.column(CONTEXT).to_numpy()[::n_columns]
    chunk = _finish_chunk(source, file, blocks, context, cut)
    if ids:
        chunk[IDS] = {
            name: table.column(name).to_numpy(zero_copy_only=False)[::n_columns] for name in IDENTITY
        }
    return chunk


def _finish_chunk(source: WindowSource, file: Path, blocks: dict, context, cut: int) -> dict:
    """Check ids, find the padding, keep the needed columns in their training dtypes; `context` is
    the stored contextSlots of windows whose first `cut` slots were left out."""
    import torch  # here, not at the top: preprocess writes windows without torch

    padding = np.logical_and.reduce([np.asarray(block) == 0 for block in blocks.values()])
    n_pad = np.where(padding.all(axis=1), padding.shape[1], padding.argmin(axis=1))
    context = np.asarray(context, dtype=np.int64)
    if context.size and (context.min() < 0 or context.max() > source.seq_length + cut):
        raise DataError(
            f"{file}: {CONTEXT} holds {context.min()} to {context.max()}; expected 0 to the window's "
            f"{source.seq_length + cut} context items"
        )
    split_start = np.maximum(context - cut, n_pad)  # n_pad >= 0: the cut-off context counts no more
    chunk = {
        PAD: torch.from_numpy(n_pad.astype(np.int16)),
        SPLIT_START: torch.from_numpy(split_start.astype(np.int16)),
    }
    for name in source.keep:
        block = np.asarray(blocks[name])
        if source.kinds[name] == "categorical":
            if block.size and (block.min() < 0 or block.max() >= source.n_classes[name]):
                raise DataError(
                    f"{file}: column '{name}' holds ids from {block.min():g} to {block.max():g}, but the "
                    f"metadata has {source.n_classes[name]} classes; the metadata does not match the data"
                )
            chunk[name] = torch.from_numpy(np.ascontiguousarray(block, dtype=np.int32))
        else:
            chunk[name] = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    return chunk


def _width_check(source: WindowSource, file: Path, width: int) -> int:
    """Check a file's window width against the metadata's; returns the leading slots left out."""
    if source.width is not None and width != source.width:
        raise DataError(
            f"{file}: windows of {width} + 1 items, but the metadata says seq_length {source.width}; "
            "the metadata file does not match the data (give the metadata these windows were written with)"
        )
    return width - source.seq_length


def _no_context(file: Path) -> DataError:
    return DataError(
        f"{file}: the windows have no {CONTEXT} (which items are context from earlier splits); they "
        "were written by an earlier version of sequifier: run `sequifier preprocess` again"
    )


def _value_names_check(source: WindowSource, file: Path, names: list) -> int:
    """Check a wide file's columns; returns the leading slots left out (see _width_check)."""
    needed = value_columns(source.seq_length)
    missing = [n for n in needed if n not in names]
    if missing or INPUT_COLUMN not in names:
        raise DataError(
            f"{file}: not a window file of seq_length >= {source.seq_length} (missing columns "
            f"{(missing or [INPUT_COLUMN])[:3]}...); the metadata file does not match the data"
        )
    if CONTEXT not in names:
        raise _no_context(file)
    return _width_check(source, file, max(int(name) for name in names if name.isdigit()))


def read_chunks(source: WindowSource, file: Path, ids: bool = False, row_groups=None, footer=None):
    """Yield the windows of one file in chunks of about CHUNK_WINDOWS; with `ids`, each chunk also
    holds the windows' identities (IDS); of a parquet file, only `row_groups` (None: all), its
    `footer` (pq.FileMetaData) read already or not."""
    rows = CHUNK_WINDOWS * len(source.columns)
    try:
        if source.fmt == "parquet":
            handle = pq.ParquetFile(file, metadata=footer)
            cut = _value_names_check(source, file, handle.schema_arrow.names)
            fingerprints.check(source, file, fingerprints.parquet_fingerprint(handle))
            names = [*(IDENTITY if ids else ()), CONTEXT, INPUT_COLUMN, *value_columns(source.seq_length)]
            for batch in handle.iter_batches(batch_size=rows, columns=names, row_groups=row_groups):
                yield _numpy_chunk(source, file, pa.Table.from_batches([batch]), ids, cut)
        elif source.fmt == "csv":
            types = {name: pa.float64() for name in value_columns(source.seq_length)}  # never inferred
            marks = {CONTEXT: pa.int64(), FINGERPRINT: pa.string()}
            convert = pacsv.ConvertOptions(column_types={**types, **marks}, strings_can_be_null=False)
            reader = pacsv.open_csv(file, convert_options=convert)
            cut = _value_names_check(source, file, reader.schema.names)
            if FINGERPRINT not in reader.schema.names:
                fingerprints.check(source, file, None)
            tables = (pa.Table.from_batches([batch]) for batch in reader)
            for table in rechunk(tables, rows):
                if table.num_rows:
                    fingerprints.check(source, file, fingerprints.csv_fingerprints(table))
                yield _numpy_chunk(source, file, table, ids, cut)
        else:
            yield _pt_chunk(source, file, ids)
    except (pa.ArrowInvalid, OSError, RuntimeError) as error:
        raise DataError(f"{file}: cannot read windows: {error}") from None


def _pt_chunk(source: WindowSource, file: Path, ids: bool) -> dict:
    import torch

    shard = torch.load(file, weights_only=True)
    if not isinstance(shard, dict) or list(shard.get("columns", [])) != list(source.columns):
        found = shard.get("columns") if isinstance(shard, dict) else type(shard).__name__
        raise DataError(
            f"{file}: windows hold the columns {found}, but the metadata lists {list(source.columns)}; "
            "the metadata file does not match the data"
        )
    width = next(iter(shard["values"].values())).shape[1]
    cut = _width_check(source, file, width - 1)
    if width < source.seq_length + 1:
        raise DataError(
            f"{file}: windows of {width} items are shorter than seq_length + 1 ({source.seq_length + 1})"
        )
    if CONTEXT not in shard:
        raise _no_context(file)
    fingerprints.check(source, file, shard.get(fingerprints.PT_KEY))
    blocks = {name: shard["values"][name][:, -(source.seq_length + 1) :].numpy() for name in source.columns}
    chunk = _finish_chunk(source, file, blocks, shard[CONTEXT].numpy(), cut)
    if ids:
        chunk[IDS] = {name: np.asarray(shard[name]) for name in IDENTITY}
    return chunk


def count_windows(source: WindowSource) -> int:
    total = 0
    for file in source.files():
        if source.fmt == "parquet":
            try:
                total += pq.ParquetFile(file).metadata.num_rows // len(source.columns)
            except (pa.ArrowInvalid, OSError) as error:
                raise DataError(f"{file}: cannot read windows: {error}") from None
        else:
            total += sum(len(chunk[PAD]) for chunk in read_chunks(source, file))
    return total
