"""Autoregression: each sequence's first window starts a generation of T items.

The context is the S items before the window's last item, as for a single prediction, so the
first generated item is the one a single prediction gives. Each predicted item (argmax, or a
draw for the sampled columns) is appended to the context in the model's encoding and the oldest
item is dropped. Every sequence gets exactly T rows: the first at the window's last item's
itemPosition, each next one step on, the step being the one between the window's last two
items (the sequence's own where its steps are even; 1 for a window of one item).
"""

import numpy as np

from sequifier.data.columns import LAST, SEQUENCE, STEP
from sequifier.data.window_files import IDS
from sequifier.infer.model_steps import ModelSteps


class Generation:
    """First windows gathered from the chunks read, generated from once a batch of them is full."""

    def __init__(self, model: ModelSteps, steps: int, batch_size: int):
        self.model = model  # encodes windows, steps once, writes the results as tables
        self.steps = steps  # T: the items generated per sequence
        self.batch_size = batch_size  # first windows gathered before they are generated from
        self.seen = set()  # sequences whose first window was taken
        self.pending = []  # (sequences, positions, steps, contexts) of first windows not generated from yet
        self.count = 0  # first windows pending

    def add(self, chunk: dict) -> list:
        """Take the first window of each sequence not seen before; generate once a batch is full."""
        sequences = chunk[IDS][SEQUENCE]
        rows = self._first_windows(sequences)
        if len(rows) == 0:
            return []
        self.seen.update(sequences[rows].tolist())
        last, step = (chunk[IDS][name][rows].astype(np.int64) for name in (LAST, STEP))
        self.pending.append((sequences[rows], last, step, self.model.encode(chunk, rows)))
        self.count += len(rows)
        return self.flush() if self.count >= self.batch_size else []

    def _first_windows(self, sequences: np.ndarray) -> np.ndarray:
        """Rows of the first window of each sequence in a chunk not seen before, in chunk order."""
        _, first = np.unique(sequences, return_index=True)
        first = np.sort(first)
        unseen = np.array([sequences[i] not in self.seen for i in first], dtype=bool)
        return first[unseen]

    def flush(self) -> list:
        """Generate from every pending first window: (output name, columns) tables."""
        if not self.pending:
            return []
        sequences, last, step = (np.concatenate([p[i] for p in self.pending]) for i in range(3))
        context = {name: np.concatenate([p[3][name] for p in self.pending]) for name in self.pending[0][3]}
        self.pending, self.count = [], 0
        return self._generate(
            sequences, last[:, None] + step[:, None] * np.arange(self.steps)[None, :], context
        )

    def _generate(self, sequences: np.ndarray, positions: np.ndarray, context: dict) -> list:
        """T steps for a batch of sequences (`positions`: [batch, T]); rows ordered by sequence, then step."""
        values, probabilities = [], []
        for _ in range(self.steps):
            step_values, step_probabilities, items = self.model.step(context, sequences)
            values.append(step_values)
            probabilities.append(step_probabilities)
            context = _advance(context, items)
        return self.model.prediction_tables(
            np.repeat(sequences, self.steps),
            positions.reshape(-1),
            {name: _by_sequence([v[name] for v in values]) for name in values[0]},
            {name: _by_sequence([p[name] for p in probabilities]) for name in probabilities[0]},
        )


def _advance(context: dict, items: dict) -> dict:
    """The context with each row's oldest item dropped and its new item (model encoding) appended."""
    return {
        name: np.concatenate([block[:, 1:], items[name].astype(block.dtype)[:, None]], axis=1)
        for name, block in context.items()
    }


def _by_sequence(arrays: list) -> np.ndarray:
    """[steps][batch, ...] -> [batch * steps, ...]: each sequence's steps together."""
    stacked = np.stack(arrays, axis=1)
    return stacked.reshape(-1, *stacked.shape[2:])
