"""The training objective: predict item t+1 of every target from items up to t.

A window of seq_length + 1 items gives the inputs (items 0..S-1) and the targets (items 1..S).
The loss covers the last `prediction_length` positions, without the targets that are padding.
"""

import torch
import torch.nn.functional as F

from sequifier.data import PAD

REAL_LOSSES = {"MSELoss": F.mse_loss, "L1Loss": F.l1_loss, "HuberLoss": F.huber_loss}


def model_inputs(batch: dict, columns, device) -> dict:
    """The input items of a batch: all but the last item of each window."""
    return {name: batch[name][:, :-1].to(device, non_blocking=True) for name in columns}


def target_mask(n_pad: torch.Tensor, seq_length: int, prediction_length: int) -> torch.Tensor:
    """[windows, prediction_length]: which of the last prediction_length targets are real items."""
    slots = torch.arange(seq_length - prediction_length + 1, seq_length + 1, device=n_pad.device)
    return slots.unsqueeze(0) >= n_pad.unsqueeze(1).long()


class Objective:
    """Per-target loss sums and their normalizers for a batch."""

    def __init__(self, args, training_spec: dict, prediction_length: int, device):
        self.targets = [(name, kind) for name, kind, _ in args.target_columns]
        self.seq_length, self.length = args.seq_length, prediction_length
        self.criteria = training_spec["criterion"]
        self.weights = training_spec["loss_weights"]
        self.class_weights = {
            name: torch.tensor(w, dtype=torch.float32, device=device)
            for name, w in (training_spec["class_weights"] or {}).items()
        }

    def losses(self, outputs: dict, batch: dict) -> dict:
        """{target: (loss sum, normalizer)} over the batch's valid target positions."""
        device = next(iter(outputs.values())).device
        mask = target_mask(batch[PAD].to(device), self.seq_length, self.length)
        result = {}
        for name, kind in self.targets:
            predicted = outputs[name][:, -self.length :].float()
            target = batch[name][:, -self.length :].to(device, non_blocking=True)
            if kind == "categorical":
                target = target.long()
                weight = self.class_weights.get(name)
                per_item = F.cross_entropy(
                    predicted.flatten(0, 1), target.flatten(), weight=weight, reduction="none"
                )
                scale = mask.float() if weight is None else mask * weight[target]
                result[name] = ((per_item.view_as(mask) * mask).sum(), scale.sum())
            else:
                per_item = REAL_LOSSES[self.criteria[name]](predicted, target, reduction="none")
                result[name] = ((per_item * mask).sum(), mask.sum().float())
        return result

    def total(self, losses: dict) -> torch.Tensor:
        """The weighted sum of the per-target mean losses: what is minimized."""
        return sum(self.weights[name] * total / count.clamp(min=1) for name, (total, count) in losses.items())
