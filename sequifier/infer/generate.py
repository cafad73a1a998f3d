"""Autoregression: each sequence's first window starts a generation of T items.

The context is the S items before the window's last item, as for a single prediction, so the
first generated item is the one a single prediction gives. Each predicted item (argmax, or a
draw for the sampled columns) is appended to the context in the model's encoding and the oldest
item is dropped. Every sequence gets exactly T rows, at consecutive itemPositions.
"""

import numpy as np

from sequifier.data.columns import SEQUENCE, START
from sequifier.data.window_files import IDS, PAD


class Generation:
    def __init__(self, application):
        self.app = application
        self.steps = application.config["autoregression_total_steps"]
        self.batch_size = application.config["inference_batch_size"]
        self.seen = set()
        self.pending = []  # (sequences, starts, inputs) of first windows not generated yet
        self.count = 0

    def add(self, chunk: dict) -> list:
        """Take the first window of each sequence not seen before; generate once a batch is full."""
        sequences = chunk[IDS][SEQUENCE]
        _, first = np.unique(sequences, return_index=True)
        first = np.sort(first)
        keep = np.array([sequences[i] not in self.seen for i in first], dtype=bool)
        rows = first[keep]
        if len(rows) == 0:
            return []
        self.seen.update(sequences[rows].tolist())
        picked = {name: chunk[name][rows] for name in self.app.inputs}
        picked[PAD] = chunk[PAD][rows]
        inputs = self.app.model_inputs(picked, embedding=False)
        self.pending.append((sequences[rows], chunk[IDS][START][rows].astype(np.int64), inputs))
        self.count += len(rows)
        return self.flush() if self.count >= self.batch_size else []

    def flush(self) -> list:
        if not self.pending:
            return []
        sequences = np.concatenate([p[0] for p in self.pending])
        starts = np.concatenate([p[1] for p in self.pending])
        context = {name: np.concatenate([p[2][name] for p in self.pending]) for name in self.app.inputs}
        self.pending, self.count = [], 0
        return self._generate(sequences, starts, context)

    def _generate(self, sequences: np.ndarray, starts: np.ndarray, context: dict) -> list:
        """T steps for a batch of sequences; rows ordered by sequence, then step."""
        values, probabilities = [], []
        for _ in range(self.steps):
            step_values, step_probabilities, encoded = self.app.decode(self.app.forward(context))
            values.append(step_values)
            probabilities.append(step_probabilities)
            for name, block in context.items():
                item = encoded[name].astype(block.dtype)[:, None]
                context[name] = np.concatenate([block[:, 1:], item], axis=1)

        def by_sequence(arrays: list) -> np.ndarray:  # [steps][batch, ...] -> [batch * steps, ...]
            stacked = np.stack(arrays, axis=1)
            return stacked.reshape(-1, *stacked.shape[2:])

        positions = (starts + self.app.width)[:, None] + np.arange(self.steps)[None, :]
        return self.app.prediction_tables(
            np.repeat(sequences, self.steps),
            positions.reshape(-1),
            {name: by_sequence([v[name] for v in values]) for name in values[0]},
            {name: by_sequence([p[name] for p in probabilities]) for name in probabilities[0]},
        )
