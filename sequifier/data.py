"""Windows for training: read from the files preprocess wrote, held in memory or streamed.

A batch is a dict of one tensor per column, [windows, seq_length + 1] (categorical ids as
int32, real values as float32), plus `n_pad`, the number of leading padding slots of each
window, and `n_context`, the number of leading slots that are padding or items of earlier splits
(the file's contextSlots, less the slots cut off by a shorter seq_length): only the slots from
there on are targets of the window's own split. In memory, batches are slices of contiguous
tensors taken by index; streamed, windows pass through a bounded shuffle buffer, one file (or
row group) at a time. Under DDP each rank takes its own share of every epoch's windows, and
every rank gets the same number of batches.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from sequifier.errors import DataError
from sequifier.table import SEQUENCE
from sequifier.window_files import (
    CONTEXT,
    INPUT_COLUMN,
    START,
    SUBSEQUENCE,
    prefetched,
    rechunk,
    value_columns,
)

log = logging.getLogger(__name__)
CHUNK_WINDOWS = 8192
PAD = "n_pad"
SPLIT_START = "n_context"
IDS = "ids"  # with read_chunks(ids=True): {sequenceId, subsequenceId, startItemPosition} as numpy arrays
IDENTITY = (SEQUENCE, SUBSEQUENCE, START)


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


def read_chunks(source: WindowSource, file: Path, ids: bool = False):
    """Yield the windows of one file in chunks of about CHUNK_WINDOWS; with `ids`, each chunk also
    holds the windows' identities (IDS)."""
    rows = CHUNK_WINDOWS * len(source.columns)
    try:
        if source.fmt == "parquet":
            handle = pq.ParquetFile(file)
            cut = _value_names_check(source, file, handle.schema_arrow.names)
            names = [*(IDENTITY if ids else ()), CONTEXT, INPUT_COLUMN, *value_columns(source.seq_length)]
            for batch in handle.iter_batches(batch_size=rows, columns=names):
                yield _numpy_chunk(source, file, pa.Table.from_batches([batch]), ids, cut)
        elif source.fmt == "csv":
            types = {name: pa.float64() for name in value_columns(source.seq_length)}  # never inferred
            convert = pacsv.ConvertOptions(
                column_types={**types, CONTEXT: pa.int64()}, strings_can_be_null=False
            )
            reader = pacsv.open_csv(file, convert_options=convert)
            cut = _value_names_check(source, file, reader.schema.names)
            tables = (pa.Table.from_batches([batch]) for batch in reader)
            for table in rechunk(tables, rows):
                yield _numpy_chunk(source, file, table, ids, cut)
        else:
            yield _pt_chunk(source, file, ids)
    except (pa.ArrowInvalid, OSError, RuntimeError) as error:
        raise DataError(f"{file}: cannot read windows: {error}") from None


def _pt_chunk(source: WindowSource, file: Path, ids: bool) -> dict:
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


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


class InMemoryWindows:
    """All windows as contiguous tensors; batches are taken by index."""

    def __init__(self, source: WindowSource):
        chunks = (chunk for file in source.files() for chunk in read_chunks(source, file))
        if source.fmt == "parquet":  # counted from the footers: filled in place, no second copy
            self.tensors = _filled(chunks, count_windows(source))
        else:
            chunks = list(chunks)
            self.tensors = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]} if chunks else {}
        self.size = len(self.tensors[PAD]) if self.tensors else 0
        if self.size == 0:
            raise DataError(f"{source.path}: holds no windows")

    def __len__(self) -> int:
        return self.size

    def to(self, device: torch.device) -> None:
        """Keep the windows on the GPU when they fit (batches are then gathered there), else pin them."""
        if device.type != "cuda":
            return
        try:
            self.tensors = {key: tensor.to(device) for key, tensor in self.tensors.items()}
        except torch.OutOfMemoryError:
            self.tensors = {key: tensor.cpu().pin_memory() for key, tensor in self.tensors.items()}

    def batch_count(self, batch_size: int, *, shuffle: bool, rank=0, world=1) -> int:
        share = self.size // world if shuffle else len(range(rank, self.size, world))
        return -(-share // batch_size)

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank=0, world=1, skip=0
    ):
        if shuffle:
            order = torch.randperm(self.size, generator=epoch_generator(seed, epoch))
            order = order[rank::world][: self.size // world]
        else:
            order = torch.arange(rank, self.size, world)
        order = order.to(self.tensors[PAD].device)
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size]
            yield {key: tensor[index] for key, tensor in self.tensors.items()}


def _filled(chunks, total: int) -> dict:
    tensors, at = {}, 0
    for chunk in chunks:
        n = len(chunk[PAD])
        if not tensors:
            tensors = {k: torch.empty((total, *v.shape[1:]), dtype=v.dtype) for k, v in chunk.items()}
        for key, value in chunk.items():
            tensors[key][at : at + n] = value
        at += n
    return {key: tensor[:at] for key, tensor in tensors.items()}


class StreamedWindows:
    """Windows read file by file through a shuffle buffer of `buffer_size` windows: memory holds
    the buffer and the chunks being read, whatever the size of the data."""

    def __init__(self, source: WindowSource, buffer_size: int, readahead: int = 0):
        self.source, self.buffer_size, self.readahead = source, buffer_size, readahead
        self.files = source.files()
        self._size = None

    def __len__(self) -> int:
        if self._size is None:
            self._size = count_windows(self.source)
        return self._size

    def batch_count(self, batch_size: int, *, shuffle: bool, rank=0, world=1) -> int:
        if shuffle:
            return -(-(len(self) // world) // batch_size)
        return -1  # validation: not needed (and not counted, to save a pass over the files)

    def _chunks(self, order):
        chunks = (chunk for i in order for chunk in read_chunks(self.source, self.files[i]))
        return prefetched(chunks, self.readahead) if self.readahead else chunks

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank=0, world=1, skip=0
    ):
        generator = epoch_generator(seed, epoch, rank)
        order = (
            torch.randperm(len(self.files), generator=epoch_generator(seed, epoch))
            if shuffle
            else range(len(self.files))
        )
        quota = len(self) // world if shuffle and world > 1 else None
        windows = self._shuffled(self._rank_share(self._chunks(order), rank, world), shuffle, generator)
        taken = 0
        for batch in _batched(windows, batch_size):
            if quota is not None:
                batch = {k: v[: quota - taken] for k, v in batch.items()}
                if len(batch[PAD]) == 0:
                    return
            taken += len(batch[PAD])
            if skip:
                skip -= 1
                continue
            yield batch

    @staticmethod
    def _rank_share(chunks, rank: int, world: int):
        offset = 0
        for chunk in chunks:
            n = len(chunk[PAD])
            if world > 1:
                chunk = {k: v[(rank - offset) % world :: world] for k, v in chunk.items()}
            offset += n
            yield chunk

    def _shuffled(self, chunks, shuffle: bool, generator: torch.Generator):
        """Chunks in, chunks out; with shuffle, windows leave the buffer in random order."""
        if not shuffle:
            yield from chunks
            return
        buffer = None
        for chunk in chunks:
            buffer = chunk if buffer is None else {k: torch.cat([buffer[k], chunk[k]]) for k in chunk}
            excess = len(buffer[PAD]) - self.buffer_size
            if excess > 0:
                order = torch.randperm(len(buffer[PAD]), generator=generator)
                out, keep = order[:excess], order[excess:]
                yield {k: v[out] for k, v in buffer.items()}
                buffer = {k: v[keep] for k, v in buffer.items()}
        if buffer is not None:
            order = torch.randperm(len(buffer[PAD]), generator=generator)
            yield {k: v[order] for k, v in buffer.items()}


def _batched(chunks, batch_size: int):
    """Re-cut a stream of chunks into batches of batch_size windows (the last may be smaller)."""
    pending, count = [], 0
    for chunk in chunks:
        while len(chunk[PAD]):
            take = min(batch_size - count, len(chunk[PAD]))
            pending.append({k: v[:take] for k, v in chunk.items()})
            chunk = {k: v[take:] for k, v in chunk.items()}
            count += take
            if count == batch_size:
                yield {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
                pending, count = [], 0
    if count:
        yield {k: torch.cat([p[k] for p in pending]) for k in pending[0]}


def open_windows(source: WindowSource, in_memory: bool, buffer_size: int, readahead: int):
    """The windows of `source`, held in memory or streamed; an error when there are none."""
    if in_memory:
        return InMemoryWindows(source)
    windows = StreamedWindows(source, buffer_size, readahead)
    if len(windows) == 0:
        raise DataError(f"{source.path}: holds no windows")
    return windows
