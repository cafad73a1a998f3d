"""The masked objective (`objective: masked`): BERT-style masked modelling with bidirectional
attention.

A window's inputs are its items 1..W (the items the causal objective predicts), so every window
has at least one item of its own split. Per window, a share (`masking_probability`) of the items
of the window's own split (never padding, never context from an earlier split) is chosen, at
least one per window; of
those, 80% become the mask (categorical: the reserved id MASK_ID; real: NaN, which the model's
encoder replaces by a learned mask vector of the column), 10% a random value (categorical: an
ordinary id; real: the value of a random item of the window) and 10% stay as they are. The loss
covers the chosen items only, each predicting its original value.

The draws are made on the CPU (the same masks on any device). In training they come from a
generator of the objective's own, reseeded per optimizer step by the trainer (with the seed of
dropout), so a resumed run draws what an uninterrupted one would. In validation each window's
draws are a hash of its own items: every validation masks the same items, whatever the number
of processes, the batch size or the order the windows are read in, so its losses compare across
epochs and runs.
"""

import torch

from sequifier.data.columns import FIRST_ID, MASK_ID
from sequifier.data.window_files import SPLIT_START
from sequifier.train.objective import Objective

CHOSEN = "masked_items"  # the batch key of the chosen items, [windows, seq_length]
MASKED, RANDOM = 0.8, 0.9  # of the chosen: below 0.8 masked, below 0.9 random, else unchanged


GOLDEN, MIX_1, MIX_2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shifted(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x >> bits with zeros shifted in (torch's >> on int64 keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mixed(x: torch.Tensor) -> torch.Tensor:
    """int64 -> well-spread int64 (the splitmix64 finalizer; products wrap)."""
    x = (x ^ _shifted(x, 30)) * MIX_1
    x = (x ^ _shifted(x, 27)) * MIX_2
    return x ^ _shifted(x, 31)


class WindowDraws:
    """Uniform draws [windows, seq_length] that depend only on each window's items and split start,
    the slot and the draw's number (the validation masks)."""

    def __init__(self, items: dict, split_start: torch.Tensor):
        key = _mixed(split_start.long())
        for c, name in enumerate(sorted(items)):
            values = items[name]
            bits = (values.view(torch.int32) if values.is_floating_point() else values).long()
            slots = torch.arange(values.shape[1]) + 1 + c * values.shape[1]
            key = key + _mixed(bits + slots * GOLDEN).sum(1)  # sums wrap: a hash of the whole window
        self.key, self.shape, self.number = _mixed(key).unsqueeze(1), next(iter(items.values())).shape, 0

    def uniform(self) -> torch.Tensor:
        self.number += 1
        slots = torch.arange(self.shape[1]).unsqueeze(0) * 1024 + self.number
        return _shifted(_mixed(self.key + _mixed(slots * GOLDEN)), 11).double() / float(1 << 53)


class GeneratorDraws:
    """Uniform draws [windows, seq_length] from a seeded generator (the training masks)."""

    def __init__(self, generator: torch.Generator, shape):
        self.generator, self.shape = generator, shape

    def uniform(self) -> torch.Tensor:
        return torch.rand(self.shape, generator=self.generator, dtype=torch.float64)


def own_items(split_start: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[windows, seq_length]: which of a window's items 1..W are of its own split."""
    slots = torch.arange(1, seq_length + 1, device=split_start.device)
    return slots.unsqueeze(0) >= split_start.unsqueeze(1).long()


def at_least_one(own: torch.Tensor, chosen: torch.Tensor, draws) -> torch.Tensor:
    """`chosen` with one of its own items chosen at random in every window that has own items but
    none chosen: each window counts in the loss, and a small masking_probability never leaves a
    batch, or a whole validation, without a target."""
    scores = draws.uniform().masked_fill(~own, -1.0)
    lacking = own.any(1) & ~chosen.any(1)
    extra = torch.zeros_like(chosen)
    extra[torch.arange(len(own)), scores.argmax(1)] = True
    return chosen | (extra & lacking.unsqueeze(1))


def corrupt(items: dict, columns, chosen: torch.Tensor, draws) -> dict:
    """`items` {column: [windows, seq_length]} with the chosen items masked, replaced at random or
    kept (80/10/10, per item, the same for all columns of the item)."""
    kind = draws.uniform()
    masked, replaced = chosen & (kind < MASKED), chosen & (kind >= MASKED) & (kind < RANDOM)
    result = {}
    for name, column_kind, n_classes, _ in columns:
        values, drawn = items[name], draws.uniform()
        if column_kind == "categorical":
            high = max(n_classes, FIRST_ID + 1)
            random = (FIRST_ID + (drawn * (high - FIRST_ID)).long()).to(values.dtype)
            mask = torch.full_like(values, MASK_ID)
        else:  # the value of a random slot of the same window
            random = values.gather(1, (drawn * values.shape[1]).long())
            mask = torch.full_like(values, float("nan"))
        result[name] = torch.where(masked, mask, torch.where(replaced, random, values))
    return result


class MaskedObjective(Objective):
    """The losses of the chosen items of every window (see the module's description)."""

    def __init__(self, args, training_spec: dict, probability: float, device):
        super().__init__(args, training_spec, args.seq_length, device)
        self.columns, self.probability = args.input_columns, probability
        self.names = [name for name, *_ in args.input_columns]
        self.generator, self.per_window = torch.Generator(), True

    def reseed(self, seed: int | None) -> None:
        """Draw the masks from a generator seeded with `seed`, or, with None, from each window's items."""
        self.per_window = seed is None
        if seed is not None:
            self.generator.manual_seed(seed)

    def _choose(self, batch: dict) -> tuple:
        """(the chosen items [windows, seq_length], the draws to go on with, the items 1..W of the
        input columns), the chosen noted in the batch (for the loss)."""
        items = {name: batch[name][:, 1:].cpu() for name in self.names}
        split_start = batch[SPLIT_START].cpu()
        own = own_items(split_start, self.seq_length)
        if self.per_window:
            draws = WindowDraws(items, split_start)
        else:
            draws = GeneratorDraws(self.generator, own.shape)
        batch[CHOSEN] = at_least_one(own, own & (draws.uniform() < self.probability), draws)
        return batch[CHOSEN], draws, items

    def inputs(self, batch: dict, columns, device) -> dict:
        """The window's items 1..W, corrupted; the chosen items noted in the batch (for the loss)."""
        chosen, draws, items = self._choose(batch)
        corrupted = corrupt(items, [c for c in self.columns if c[0] in columns], chosen, draws)
        return {name: value.to(device, non_blocking=True) for name, value in corrupted.items()}

    def mask(self, batch: dict, device) -> torch.Tensor:
        """[windows, seq_length]: the chosen items (drawn by `inputs`, or here for a batch that no
        model reads, such as the baselines')."""
        chosen = batch[CHOSEN] if CHOSEN in batch else self._choose(batch)[0]
        return chosen.to(device)


def make_objective(config: dict, args, prediction_length: int, device) -> Objective:
    """The objective of a train config: causal (the next item) or masked."""
    spec = config["training_spec"]
    if config["objective"] == "masked":
        return MaskedObjective(args, spec, config["masking_probability"], device)
    return Objective(args, spec, prediction_length, device)
