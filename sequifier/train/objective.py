"""The training objective: predict item t+k of every target from items up to t (k: target_offset).

A window of seq_length + k items gives the inputs (items 0..S-1) and the targets (items k..S+k-1).
The loss covers the last `prediction_length` positions, without the targets that are padding or
items of an earlier split (context of a validation or test window, never its targets).
"""

import torch
import torch.nn.functional as F

from sequifier.data.columns import FIRST_ID
from sequifier.data.window_files import SPLIT_START


def gaussian_nll(predicted: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """torch's GaussianNLLLoss (without its constant) of predictions [..., 2]: mean and variance."""
    return F.gaussian_nll_loss(predicted[..., 0], target, predicted[..., 1], reduction=reduction)


REAL_LOSSES = {
    "MSELoss": F.mse_loss,
    "L1Loss": F.l1_loss,
    "HuberLoss": F.huber_loss,
    "GaussianNLLLoss": gaussian_nll,
}


def model_inputs(batch: dict, columns, device, offset: int = 1) -> dict:
    """The input items of a batch: all but the last `offset` (k) items of each window."""
    return {name: batch[name][:, :-offset].to(device, non_blocking=True) for name in columns}


def target_mask(
    split_start: torch.Tensor, seq_length: int, prediction_length: int, offset: int = 1
) -> torch.Tensor:
    """[windows, prediction_length]: which of the last prediction_length targets are items of the
    window's own split; `split_start` is each window's first such slot (after padding and context),
    in windows of seq_length + offset slots."""
    end = seq_length + offset
    slots = torch.arange(end - prediction_length, end, device=split_start.device)
    return slots.unsqueeze(0) >= split_start.unsqueeze(1).long()


class Objective:
    """Per-target loss sums and their normalizers for a batch."""

    def __init__(self, args, training_spec: dict, prediction_length: int, device):
        self.targets = [(name, kind) for name, kind, _ in args.target_columns]
        self.seq_length, self.length = args.seq_length, prediction_length
        self.offset = args.target_offset  # k: a target is the item k steps after its input
        self.criteria = training_spec["criterion"]
        self.weights = training_spec["loss_weights"]
        self.class_weights = {
            name: torch.tensor(w, dtype=torch.float32, device=device)
            for name, w in (training_spec["class_weights"] or {}).items()
        }

    def reseed(self, seed: int | None) -> None:
        """Seed the objective's own draws, None: per window (none here; see masking.py)."""

    def inputs(self, batch: dict, columns, device) -> dict:
        return model_inputs(batch, columns, device, self.offset)

    def mask(self, batch: dict, device) -> torch.Tensor:
        """[windows, prediction_length]: the targets that count (the window's own split's items)."""
        return target_mask(batch[SPLIT_START].to(device), self.seq_length, self.length, self.offset)

    def targets_of(self, batch: dict, name: str, device) -> torch.Tensor:
        """The last prediction_length targets of a column."""
        return batch[name][:, -self.length :].to(device, non_blocking=True)

    def summed(self, name: str, per_item: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple:
        """(loss sum, normalizer) of per-item losses over the masked targets; categorical targets
        are weighted by their class weights, as CrossEntropyLoss does."""
        weight = self.class_weights.get(name)
        scale = mask.float() if weight is None else mask * weight[target.long()]
        return (per_item * scale).sum(), scale.sum()

    def losses(self, outputs: dict, batch: dict) -> dict:
        """{target: (loss sum, normalizer)} over the batch's valid target positions."""
        device = next(iter(outputs.values())).device
        mask = self.mask(batch, device)
        result = {}
        for name, kind in self.targets:
            predicted = outputs[name][:, -self.length :].float()
            target = self.targets_of(batch, name, device)
            if kind == "categorical":
                target = target.long()
                per_item = F.cross_entropy(predicted.flatten(0, 1), target.flatten(), reduction="none")
                per_item = per_item.view_as(mask)
            else:
                per_item = REAL_LOSSES[self.criteria[name]](predicted, target, reduction="none")
            result[name] = self.summed(name, per_item, target, mask)
        return result

    def correct(self, outputs: dict, batch: dict) -> dict:
        """{categorical target: (right predictions, targets)}: top-1 over the ordinary classes (ids
        from FIRST_ID, as inference predicts) on the batch's valid target positions."""
        result, mask = {}, self.mask(batch, next(iter(outputs.values())).device)
        for name, kind in self.targets:
            if kind != "categorical":
                continue
            logits = outputs[name][:, -self.length :]
            predicted = logits[..., FIRST_ID:].argmax(-1) + FIRST_ID
            right = (predicted == self.targets_of(batch, name, logits.device).long()) & mask
            result[name] = (right.sum().float(), mask.sum().float())
        return result

    def total(self, losses: dict) -> torch.Tensor:
        """The weighted sum of the per-target mean losses: what is minimized."""
        return sum(self.weights[name] * total / count.clamp(min=1) for name, (total, count) in losses.items())
