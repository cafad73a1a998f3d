"""Splits and windows as index arithmetic over sorted sequences (numpy, no Python loops).

A window holds W + 1 consecutive items of one sequence (W = seq_length), stored oldest first.
Windows of split k end on an item of split k and may take context from before it; a segment
shorter than W + 1 items is left-padded. A window is described by its sequence, its index in
that sequence and split (subsequenceId), `offset`: the index, within the sequence, of its
first slot (negative when the window starts with padding), and `context`: how many leading slots
are padding or items of earlier splits, so that an evaluation counts only its own split's items.
"""

from dataclasses import dataclass

import numpy as np

from sequifier.errors import DataError


def split_bounds(lengths: np.ndarray, ratios, assigned_split: np.ndarray | None) -> np.ndarray:
    """Item boundaries [n_sequences, n_splits + 1]: split k holds items b[k] <= i < b[k + 1].

    within_sequence (assigned_split None): each sequence is cut by the ratios, rounding to the
    nearest item. between_sequence: a sequence lies wholly in its assigned split.
    """
    n_splits = len(ratios)
    lengths = lengths.astype(np.int64)
    if assigned_split is None:
        cumulative = np.concatenate([[0.0], np.cumsum(ratios)[:-1] / np.sum(ratios), [1.0]])
        return np.floor(np.outer(lengths, cumulative) + 0.5).astype(np.int64)
    bounds = np.zeros((len(lengths), n_splits + 1), dtype=np.int64)
    after = np.arange(n_splits + 1)[None, :] > assigned_split[:, None]
    bounds[after] = np.broadcast_to(lengths[:, None], bounds.shape)[after]
    return bounds


@dataclass
class Windows:
    """The windows of one split, ordered by sequence, then subsequenceId."""

    sequence: np.ndarray  # index of the sequence (in the part's sorted order)
    subsequence: np.ndarray  # index of the window within its sequence and split
    offset: np.ndarray  # index in the sequence of the window's first slot; < 0 means padding
    context: np.ndarray  # leading slots before the split's first item (padding, earlier splits)

    def __len__(self) -> int:
        return len(self.sequence)

    def slice(self, start: int, stop: int) -> "Windows":
        part = slice(start, stop)
        return Windows(self.sequence[part], self.subsequence[part], self.offset[part], self.context[part])


def windows_of_split(bounds: np.ndarray, k: int, seq_length: int, stride: int, mode: str) -> Windows:
    """The windows of split k for every sequence, given split boundaries from `split_bounds`."""
    lo, hi = bounds[:, k], bounds[:, k + 1]
    active = np.flatnonzero(hi > lo)
    segment_start = np.maximum(0, lo[active] - seq_length)
    size = hi[active] - segment_start
    padding = np.maximum(0, seq_length + 1 - size)
    span = size + padding - seq_length - 1  # how far the first window's start can move
    if mode == "exact":
        uneven = np.flatnonzero(span % stride)
        if len(uneven):
            raise UnevenStride(k, int(active[uneven[0]]), int(span[uneven[0]]), stride, len(uneven))
        counts = span // stride + 1
    else:
        counts = -(-span // stride) + 1
    total = int(counts.sum())
    segment = np.repeat(np.arange(len(active)), counts)
    first_of_segment = np.cumsum(counts) - counts
    j = np.arange(total, dtype=np.int64) - np.repeat(first_of_segment, counts)
    if mode == "exact":
        start = j * stride
    else:
        gaps = np.maximum(counts - 1, 1)[segment]
        start = (2 * j * span[segment] + gaps) // (2 * gaps)
        start = np.where(counts[segment] == 1, 0, start)
    offset = segment_start[segment] - padding[segment] + start
    context = np.maximum(lo[active][segment] - offset, 0)  # the slot of the split's first item
    return Windows(sequence=active[segment], subsequence=j, offset=offset, context=context)


def window_counts(bounds: np.ndarray, seq_length: int, strides, mode: str) -> list[int]:
    return [len(windows_of_split(bounds, k, seq_length, s, mode)) for k, s in enumerate(strides)]


class UnevenStride(DataError):
    """subsequence_start_mode exact, but a segment's span is not a multiple of the stride."""

    def __init__(self, split: int, sequence: int, span: int, stride: int, count: int):
        self.split, self.sequence, self.span, self.stride, self.count = split, sequence, span, stride, count
        super().__init__(f"split {split}: stride {stride} does not divide span {span}")


def slot_rows(seq_start: np.ndarray, windows: Windows, seq_length: int, padding_row: int) -> np.ndarray:
    """Row of every slot of every window, [W + 1, n_windows]; padding slots point at `padding_row`."""
    relative = np.arange(seq_length + 1)[:, None] + windows.offset[None, :]
    return np.where(relative < 0, padding_row, seq_start[windows.sequence][None, :] + relative)


def first_steps(positions: np.ndarray, seq_start: np.ndarray) -> np.ndarray:
    """Per sequence (`seq_start`: its first row, and one past the last), the step between its first
    two itemPositions; 1 for a sequence of one item."""
    first, lengths = seq_start[:-1], np.diff(seq_start)
    second = np.minimum(first + 1, len(positions) - 1)
    return np.where(lengths > 1, positions[second] - positions[first], 1)


def irregular_sequences(positions: np.ndarray, seq_start: np.ndarray) -> int:
    """How many sequences have itemPositions whose steps are not all equal."""
    lengths = np.diff(seq_start)
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    steps = np.diff(positions)
    inner = sequence[1:] == sequence[:-1]
    uneven = inner & (steps != first_steps(positions, seq_start)[sequence[:-1]])
    return len(np.unique(sequence[:-1][uneven]))


def window_positions(positions: np.ndarray, seq_start: np.ndarray, windows: Windows, seq_length: int):
    """Per window: the itemPosition of its first slot (padding slots count back from the
    sequence's first item by the step between its first two items), of its last item, and the
    step between its last two items (1 when the window holds one item)."""
    sequence_start = seq_start[windows.sequence]
    first_real = sequence_start + np.maximum(windows.offset, 0)
    back = np.minimum(windows.offset, 0) * first_steps(positions, seq_start)[windows.sequence]
    start = positions[first_real] + back
    last_row = sequence_start + windows.offset + seq_length
    last = positions[last_row]
    step = np.where(last_row > sequence_start, last - positions[np.maximum(last_row - 1, 0)], 1)
    return start, last, step
