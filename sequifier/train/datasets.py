"""Windows for training: held in memory or streamed, in batches, each rank its share.

In memory, batches are slices of contiguous tensors taken by index; streamed, windows pass
through a bounded shuffle buffer, one file (or row group) at a time. Under DDP each rank takes its
own share of every epoch's windows (streamed, it reads only the files or row groups of its share),
and every rank gets the same number of batches. Batches are
the chunks of `sequifier.data.window_files`, cut to batch_size.
"""

import torch

from sequifier.data import window_shares
from sequifier.data.streams import prefetched
from sequifier.data.window_files import PAD, WindowSource, count_windows, read_chunks
from sequifier.errors import DataError


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
    """Windows read piece by piece (a row group or a file, window_shares.py) through a shuffle
    buffer of `buffer_size` windows: memory holds the buffer and the chunks being read, whatever
    the size of the data. Under DDP each rank reads only the pieces of its share of the epoch."""

    def __init__(self, source: WindowSource, buffer_size: int, readahead: int = 0):
        self.source, self.buffer_size, self.readahead = source, buffer_size, readahead
        self.files = source.files()
        self._pieces = None
        self.read = []  # the parts of pieces the latest epoch read (window_shares.Slice), in order

    @property
    def pieces(self) -> list:
        if self._pieces is None:
            self._pieces = window_shares.pieces(self.source, self.files)
        return self._pieces

    def __len__(self) -> int:
        return sum(piece.windows for piece in self.pieces)

    def batch_count(self, batch_size: int, *, shuffle: bool, rank=0, world=1) -> int:
        if shuffle:
            return -(-(len(self) // world) // batch_size)
        return -1  # validation: not needed (and not counted, to save a pass over csv files)

    def share(self, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank=0, world=1) -> list:
        """The parts of the pieces this rank reads in the epoch (window_shares.Slice), in order."""
        if not shuffle and world == 1:  # every window in file order: nothing to count first
            return [window_shares.Slice(window_shares.Piece(f, None, -1, -1), 0, -1) for f in self.files]
        generator = epoch_generator(seed, epoch) if shuffle else None  # the same order on every rank
        order = window_shares.epoch_order(self.pieces, generator)
        return window_shares.rank_slices(self.pieces, order, rank, world, equal=shuffle)

    def _chunks(self, slices):
        self.read = []

        def chunks():
            for part in slices:
                self.read.append(part)
                if part.stop < 0:  # a whole file
                    yield from read_chunks(self.source, part.piece.file)
                else:
                    yield from window_shares.sliced_chunks(self.source, part)

        return prefetched(chunks(), self.readahead) if self.readahead else chunks()

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank=0, world=1, skip=0
    ):
        slices = self.share(shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world=world)
        windows = self._shuffled(self._chunks(slices), shuffle, epoch_generator(seed, epoch, rank))
        for batch in _batched(windows, batch_size):
            if skip:
                skip -= 1
                continue
            yield batch

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
