"""Splits and windows as index arithmetic: a hand-checked case and properties over many."""

import numpy as np
import pytest

from sequifier.data.windows import (
    Windows,
    irregular_sequences,
    slot_rows,
    split_bounds,
    window_positions,
    windows_of_split,
)


def test_within_sequence_bounds_round_to_nearest_item():
    bounds = split_bounds(np.array([10, 200, 7]), [0.8, 0.1, 0.1], None)
    assert bounds.tolist() == [[0, 8, 9, 10], [0, 160, 180, 200], [0, 6, 6, 7]]


def test_ratios_that_do_not_sum_exactly_in_floating_point():
    # 0.7 + 0.2 is 0.8999999999999999: still 9 of 10 items before the last split
    assert split_bounds(np.array([10]), [0.7, 0.2, 0.1], None).tolist() == [[0, 7, 9, 10]]


def test_between_sequence_bounds_hold_whole_sequences():
    bounds = split_bounds(np.array([5, 6, 7]), [0.5, 0.3, 0.2], np.array([2, 0, 1]))
    assert bounds.tolist() == [[0, 0, 0, 5], [0, 6, 6, 6], [0, 0, 7, 7]]


def test_hand_checked_windows():
    # one sequence of 10 items, W = 3, train items 0..7, validation 8, test 9
    bounds = np.array([[0, 8, 9, 10]])
    train = windows_of_split(bounds, 0, 3, 2, "distribute")
    assert train.offset.tolist() == [0, 2, 4]  # windows 0-3, 2-5, 4-7
    assert train.subsequence.tolist() == [0, 1, 2]
    validation = windows_of_split(bounds, 1, 3, 2, "distribute")
    assert validation.offset.tolist() == [5]  # context 5-7 from train, predicts item 8
    short = windows_of_split(np.array([[0, 2, 2, 2]]), 0, 3, 1, "distribute")
    assert short.offset.tolist() == [-2]  # two padding slots, then items 0 and 1
    values = np.array([10, 11, 0])  # the last row is the padding row
    assert values[slot_rows(np.array([0]), short, 3, padding_row=2)].T.tolist() == [[0, 0, 10, 11]]
    start, last, step = window_positions(np.array([5, 6]), np.array([0, 2]), short, 3)
    assert (start.tolist(), last.tolist(), step.tolist()) == ([3], [6], [1])


def test_positions_of_windows_over_gapped_items():
    # sequence 0 at 0, 10, 20, 30 (even steps); sequence 1 at 5, 6, 9 (uneven); sequence 2: one item at 7
    positions, starts = np.array([0, 10, 20, 30, 5, 6, 9, 7]), np.array([0, 4, 7, 8])
    windows = Windows(
        sequence=np.array([0, 0, 1, 1, 2]),
        subsequence=np.array([0, 1, 0, 1, 0]),
        offset=np.array([-2, 1, -1, 0, -2]),  # W = 2: the last items are 0 + 0, 0 + 3, 4 + 1, 4 + 2, 7 + 0
        context=np.zeros(5, dtype=np.int64),
    )
    start, last, step = window_positions(positions, starts, windows, 2)
    assert start.tolist() == [-20, 10, 4, 5, 5]  # padding counts back by the first step (1 for one item)
    assert last.tolist() == [0, 30, 6, 9, 7]
    assert step.tolist() == [1, 10, 1, 3, 1]  # the step into the last item; 1 without an item before it
    assert irregular_sequences(positions, starts) == 1


def test_exact_mode_rejects_a_stride_that_does_not_divide():
    from sequifier.data.windows import UnevenStride

    bounds = np.array([[0, 10]])  # span 10 - 4 = 6 for W = 3
    assert windows_of_split(bounds, 0, 3, 3, "exact").offset.tolist() == [0, 3, 6]
    with pytest.raises(UnevenStride) as error:
        windows_of_split(bounds, 0, 3, 4, "exact")
    assert (error.value.span, error.value.stride) == (6, 4)


@pytest.mark.parametrize("mode", ["distribute", "exact"])
@pytest.mark.parametrize("method", ["within", "between"])
def test_window_properties(mode, method):
    rng = np.random.default_rng(3)
    seq_length, stride = 5, (1 if mode == "exact" else 3)
    lengths = rng.integers(1, 40, size=300)
    assigned = rng.integers(0, 3, size=len(lengths)) if method == "between" else None
    bounds = split_bounds(lengths, [0.7, 0.2, 0.1], assigned)
    for k in range(3):
        w = windows_of_split(bounds, k, seq_length, stride, mode)
        for i in range(len(lengths)):
            lo, hi = bounds[i, k], bounds[i, k + 1]
            first_slots = w.offset[w.sequence == i]
            if hi == lo:
                assert len(first_slots) == 0, "no windows without items in the split"
                continue
            last_slots = first_slots + seq_length
            assert np.all((lo <= last_slots) & (last_slots < hi)), (
                "a window of split k ends on an item of split k"
            )
            assert last_slots[-1] == hi - 1, "the last window ends on the split's last item"
            assert last_slots[0] == max(lo, min(seq_length, hi - 1)), (
                "the first window ends as early as it can"
            )
            assert np.all(first_slots >= min(0, lo - seq_length)), "context reaches back at most W items"
            segment = hi - max(0, lo - seq_length)
            assert (first_slots[0] < 0) == (segment < seq_length + 1), "padding only for short segments"
            steps = np.diff(first_slots)
            assert np.all(steps > 0) and np.all(steps <= stride)
            if mode == "exact":
                assert np.all(steps == stride)
            span = first_slots[-1] - first_slots[0]
            assert len(first_slots) == -(-span // stride) + 1, "no more windows than the stride needs"
            assert w.subsequence[w.sequence == i].tolist() == list(range(len(first_slots)))


def test_slots_keep_sequences_apart():
    values = np.append(np.arange(100, 110), 0)
    starts = np.array([0, 3, 10])  # sequences of 3 and 7 items
    w = Windows(
        sequence=np.array([0, 1, 1]),
        subsequence=np.array([0, 0, 1]),
        offset=np.array([-1, 0, 3]),
        context=np.array([1, 0, 0]),
    )
    assert values[slot_rows(starts, w, 3, padding_row=10)].T.tolist() == [
        [0, 100, 101, 102],
        [103, 104, 105, 106],
        [106, 107, 108, 109],
    ]


def test_prefetched_keeps_order_raises_and_lets_go():
    import threading

    from sequifier.data.streams import prefetched

    assert list(prefetched(iter(range(10)))) == list(range(10))

    def failing():
        yield 1
        raise ValueError("broken producer")

    with pytest.raises(ValueError, match="broken producer"):
        list(prefetched(failing()))
    before = set(threading.enumerate())
    stream = prefetched(iter(range(1000)), depth=1)
    next(stream)
    producers = set(threading.enumerate()) - before
    assert producers, "the producer runs in a thread of its own"
    stream.close()  # the consumer stops early: the producer thread must end too
    for thread in producers:
        thread.join(timeout=2)
    assert not any(thread.is_alive() for thread in producers)
