"""Which windows each DDP rank reads when streaming: pieces of the window files and each rank's share.

A piece is the smallest part of the windows that is read alone: a row group of a parquet file
(found in its footer, with its window count, without reading the data), else a whole file (a pt
shard counted from its header through a memory map, a csv file by reading it). An epoch lays the
pieces out in one order: shuffled, the files in a seeded random order and the row groups of each
file in a seeded random order. The order is the same on every rank; rank r takes the windows
[r * share, (r + 1) * share) of it, share = windows // world when training (the last
windows % world of the order are left out, so every rank gets as many windows and as many
batches), and the windows from r * windows // world to (r + 1) * windows // world when validating
(every window once). A rank reads only the pieces its range touches: at most one piece at each
end of its range is read by a neighbouring rank too, each keeping its own part. Listing the
pieces checks every file's columns and fingerprint (from its footer or header) on every rank, so
that files of other metadata stop all ranks alike, not only the one that reads them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sequifier.data import fingerprints
from sequifier.data.columns import CONTEXT
from sequifier.data.window_files import PAD, WindowSource, read_chunks
from sequifier.errors import DataError


@dataclass(frozen=True)
class Piece:
    file: Path
    row_group: int | None  # a parquet row group; None: the whole file
    windows: int
    stored_bytes: int  # on disk: the row group's compressed columns, or the file's size
    footer: object = field(default=None, compare=False, repr=False)  # a parquet file's, read once


@dataclass(frozen=True)
class Slice:
    piece: Piece
    start: int  # the windows [start, stop) of the piece
    stop: int


def pieces(source: WindowSource, files: list) -> list[Piece]:
    """The pieces of the window files, in file order."""
    found = []
    for file in files:
        try:
            if source.fmt == "parquet":
                of_file = _parquet_pieces(file, len(source.columns))
                footer = of_file[0].footer if of_file else None
                for _ in read_chunks(source, file, row_groups=[], footer=footer):
                    pass  # the file's columns and fingerprint checked, on every rank, no data read
                found += of_file
            elif source.fmt == "pt":
                found.append(Piece(file, None, _pt_windows(source, file), file.stat().st_size))
            else:
                windows = sum(len(chunk[PAD]) for chunk in read_chunks(source, file))
                found.append(Piece(file, None, windows, file.stat().st_size))
        except (pa.ArrowInvalid, OSError, RuntimeError, KeyError, ValueError) as error:
            raise DataError(f"{file}: cannot read windows: {error}") from None
    return found


def _parquet_pieces(file: Path, n_columns: int) -> list[Piece]:
    metadata = pq.ParquetFile(file).metadata
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    sizes = [sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups]
    if any(g.num_rows % n_columns for g in groups):  # row groups that cut windows: the file is one piece
        return [Piece(file, None, metadata.num_rows // n_columns, file.stat().st_size, metadata)]
    return [
        Piece(file, i, g.num_rows // n_columns, size, metadata)
        for i, (g, size) in enumerate(zip(groups, sizes))
    ]


def _pt_windows(source: WindowSource, file: Path) -> int:
    import torch

    shard = torch.load(file, weights_only=True, mmap=True)  # the tensors stay on disk
    if not isinstance(shard, dict) or CONTEXT not in shard:  # read_chunks says what is wrong
        return sum(len(chunk[PAD]) for chunk in read_chunks(source, file))
    fingerprints.check(source, file, shard.get(fingerprints.PT_KEY))  # on every rank, not only the reader's
    return len(shard[CONTEXT])


def epoch_order(found: list[Piece], generator=None) -> list[int]:
    """The pieces' indices in the epoch's order: files and row groups shuffled by `generator`
    (a torch.Generator), or in file order without one."""
    import torch

    files = list(dict.fromkeys(piece.file for piece in found))
    by_file = {file: [] for file in files}
    for i, piece in enumerate(found):
        by_file[piece.file].append(i)
    if generator is None:
        return [i for file in files for i in by_file[file]]
    order = []
    for f in torch.randperm(len(files), generator=generator).tolist():
        within = by_file[files[f]]
        order += [within[j] for j in torch.randperm(len(within), generator=generator).tolist()]
    return order


def rank_slices(found: list[Piece], order: list[int], rank: int, world: int, equal: bool) -> list[Slice]:
    """The parts of the pieces that rank `rank` of `world` reads, in the epoch's `order`: with
    `equal`, windows // world on each rank (training); else every window once (validation)."""
    total = sum(piece.windows for piece in found)
    if equal:
        low, high = rank * (total // world), (rank + 1) * (total // world)
    else:
        low, high = rank * total // world, (rank + 1) * total // world
    slices, at = [], 0
    for i in order:
        piece = found[i]
        start, stop = max(low - at, 0), min(high - at, piece.windows)
        if start < stop:
            slices.append(Slice(piece, start, stop))
        at += piece.windows
    return slices


def sliced_chunks(source: WindowSource, part: Slice):
    """The chunks of the windows [start, stop) of a piece, reading only the piece (and no further
    than `stop`)."""
    groups = None if part.piece.row_group is None else [part.piece.row_group]
    at = 0
    for chunk in read_chunks(source, part.piece.file, row_groups=groups, footer=part.piece.footer):
        n = len(chunk[PAD])
        low, high = max(part.start - at, 0), min(part.stop - at, n)
        at += n
        if low < high:
            yield chunk if (low, high) == (0, n) else {k: v[low:high] for k, v in chunk.items()}
        if at >= part.stop:
            return
