"""The masked objective (`objective: masked`): BERT-style masked modelling with bidirectional
attention.

A window's inputs are its items 1..W (the items the causal objective predicts), so every window
has at least one item of its own split. Per window, a share (`masking_probability`) of the items
of the window's own split (never padding, never context from an earlier split) is chosen, at
least one per window; of
those, 80% become the mask (categorical: the reserved id MASK_ID; real: NaN, which the model's
encoder replaces by a learned mask vector of the column), 10% a random value (categorical: an
ordinary id; real: the value of a random item of the batch) and 10% stay as they are. The loss
covers the chosen items only, each predicting its original value.

The draws come from a generator of the objective's own, on the CPU (the same masks on any
device): reseeded per optimizer step by the trainer (with the seed of dropout), so a resumed
run draws what an uninterrupted one would, and reseeded before every validation with a seed of
its own, so that every validation masks the same items and its losses compare across epochs.
"""

import torch

from sequifier.data.columns import FIRST_ID, MASK_ID
from sequifier.data.window_files import SPLIT_START
from sequifier.train.objective import Objective

CHOSEN = "masked_items"  # the batch key of the chosen items, [windows, seq_length]
MASKED, RANDOM = 0.8, 0.9  # of the chosen: below 0.8 masked, below 0.9 random, else unchanged


def validation_seed(seed: int) -> int:
    """The seed of the validation masks: the same in every epoch."""
    return (seed * 1_000_003 + 7_919) & 0x7FFF_FFFF_FFFF_FFFF


def own_items(split_start: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[windows, seq_length]: which of a window's items 1..W are of its own split."""
    slots = torch.arange(1, seq_length + 1, device=split_start.device)
    return slots.unsqueeze(0) >= split_start.unsqueeze(1).long()


def at_least_one(own: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`chosen` with one of its own items chosen at random in every window that has own items but
    none chosen: each window counts in the loss, and a small masking_probability never leaves a
    batch, or a whole validation, without a target."""
    scores = torch.rand(own.shape, generator=generator).masked_fill(~own, -1.0)
    lacking = own.any(1) & ~chosen.any(1)
    extra = torch.zeros_like(chosen)
    extra[torch.arange(len(own)), scores.argmax(1)] = True
    return chosen | (extra & lacking.unsqueeze(1))


def corrupt(items: dict, columns, chosen: torch.Tensor, generator: torch.Generator) -> dict:
    """`items` {column: [windows, seq_length]} with the chosen items masked, replaced at random or
    kept (80/10/10, per item, the same for all columns of the item)."""
    kind = torch.rand(chosen.shape, generator=generator)
    masked, replaced = chosen & (kind < MASKED), chosen & (kind >= MASKED) & (kind < RANDOM)
    result = {}
    for name, column_kind, n_classes, _ in columns:
        values = items[name]
        if column_kind == "categorical":
            high = max(n_classes, FIRST_ID + 1)
            random = torch.randint(FIRST_ID, high, values.shape, generator=generator).to(values.dtype)
            mask = torch.full_like(values, MASK_ID)
        else:
            pick = torch.randint(0, values.numel(), values.shape, generator=generator)
            random = values.reshape(-1)[pick]
            mask = torch.full_like(values, float("nan"))
        result[name] = torch.where(masked, mask, torch.where(replaced, random, values))
    return result


class MaskedObjective(Objective):
    """The losses of the chosen items of every window (see the module's description)."""

    def __init__(self, args, training_spec: dict, probability: float, device):
        super().__init__(args, training_spec, args.seq_length, device)
        self.columns, self.probability = args.input_columns, probability
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def inputs(self, batch: dict, columns, device) -> dict:
        """The window's items 1..W, corrupted; the chosen items noted in the batch (for the loss)."""
        items = {name: batch[name][:, 1:].cpu() for name in columns}
        own = own_items(batch[SPLIT_START].cpu(), self.seq_length)
        drawn = own & (torch.rand(own.shape, generator=self.generator) < self.probability)
        chosen = at_least_one(own, drawn, self.generator)
        batch[CHOSEN] = chosen
        corrupted = corrupt(items, [c for c in self.columns if c[0] in items], chosen, self.generator)
        return {name: value.to(device, non_blocking=True) for name, value in corrupted.items()}

    def mask(self, batch: dict, device) -> torch.Tensor:
        """[windows, seq_length]: the chosen items (drawn by `inputs`)."""
        return batch[CHOSEN].to(device)


def make_objective(config: dict, args, prediction_length: int, device) -> Objective:
    """The objective of a train config: causal (the next item) or masked."""
    spec = config["training_spec"]
    if config["objective"] == "masked":
        return MaskedObjective(args, spec, config["masking_probability"], device)
    return Objective(args, spec, prediction_length, device)
