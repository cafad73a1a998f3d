"""Validation: the model's losses and accuracy on a split, and the baselines it has to beat.

Every figure covers only the targets of the windows' own split (see `objective.target_mask`): no
padding, and none of the context items that a validation window takes from the training split.
Sums are taken per process and added up over the processes (DDP), so a figure is the same
whatever the number of processes.

The baselines, computed once on the validation split with the same targets and loss:
- `last_value`: repeat the last input item, the one target_offset steps before the target
  (categorical: its accuracy; real: its loss);
- `training_prior`: the training split's class frequencies (categorical: their cross-entropy, and
  the accuracy of always predicting the most frequent class) or its mean (real: its loss);
- `best`: per target the lower loss and the higher accuracy of the two.
"""

import math

import numpy as np
import torch

from sequifier.data.columns import FIRST_ID, OTHER_ID
from sequifier.data.metadata import Metadata
from sequifier.train import distributed
from sequifier.train.objective import REAL_LOSSES, Objective

BASELINES = ("last_value", "training_prior")


def add(sums: dict, found: dict) -> None:
    """Accumulate {name: (sum, count)} into {name: tensor [sum, count]}."""
    for name, (total, count) in found.items():
        stacked = torch.stack([total.detach().float(), count.detach().float()])
        sums[name] = sums[name] + stacked if name in sums else stacked


def means(process, sums: dict, names: list, device) -> dict:
    """{name: sum / count} over every process; NaN for a name without targets."""
    if not names:
        return {}
    stacked = torch.stack([sums.get(n, torch.zeros(2, device=device)) for n in names])
    stacked = distributed.all_sum(process, stacked).tolist()
    return {n: total / count if count else math.nan for n, (total, count) in zip(names, stacked)}


def weighted_total(weights: dict, per_target: dict) -> float:
    """The figure minimized: the loss_weights-weighted sum of the per-target losses."""
    return sum(weights[name] * loss for name, loss in per_target.items())


class Evaluator:
    """Evaluates models (and the baselines) on one split of windows, in fixed order."""

    def __init__(self, windows, objective: Objective, config: dict, n_classes: dict, process, device):
        self.windows, self.objective, self.config, self.n_classes = windows, objective, config, n_classes
        self.process, self.device = process, device
        self.targets = config["target_columns"]
        self.categorical = [n for n in self.targets if config["target_column_types"][n] == "categorical"]
        self.weights = config["training_spec"]["loss_weights"]

    def batches(self):
        """The split's batches in fixed order; the objective's draws (masks) made per window."""
        rank, world = self.process.rank, self.process.world
        self.objective.reseed(None)
        return self.windows.batches(
            self.config["inference_batch_size"], shuffle=False, rank=rank, world=world
        )

    @torch.no_grad()
    def model(self, model, autocast) -> dict:
        """{"loss", "losses" per target, "accuracy" per categorical target, "counts": predicted
        classes at the last position for the class_share_log_columns}."""
        model.eval()
        losses, right = {}, {}
        counts = {name: None for name in self.config["training_spec"]["class_share_log_columns"]}
        for batch in self.batches():
            with autocast():
                outputs = model(self.objective.inputs(batch, self.config["input_columns"], self.device))
            add(losses, self.objective.losses(outputs, batch))
            add(right, self.objective.correct(outputs, batch))
            for name in counts:
                found = torch.bincount(outputs[name][:, -1].argmax(-1), minlength=outputs[name].shape[-1])
                counts[name] = found if counts[name] is None else counts[name] + found
        for name, found in counts.items():  # a process without validation windows adds zeros
            found = (
                torch.zeros(self.n_classes[name], dtype=torch.long, device=self.device)
                if found is None
                else found
            )
            counts[name] = distributed.all_sum(self.process, found).cpu()
        per_target = means(self.process, losses, self.targets, self.device)
        return {
            "loss": weighted_total(self.weights, per_target),
            "losses": per_target,
            "accuracy": means(self.process, right, self.categorical, self.device),
            "counts": counts,
        }

    @torch.no_grad()
    def baselines(self, metadata: Metadata) -> dict:
        """{baseline: {"loss", "losses", "accuracy"}}; a loss a baseline does not have is NaN (the
        last value's cross-entropy: a certain prediction that is wrong costs infinitely much)."""
        priors = self._priors(metadata)
        sums = {kind: ({}, {}) for kind in BASELINES}
        objective, length, k = self.objective, self.objective.length, self.objective.offset
        for batch in self.batches():
            mask = objective.mask(batch, self.device)
            for name in self.targets:
                target = objective.targets_of(batch, name, self.device)
                last = batch[name][:, -length - k : -k].to(self.device)  # the last input of each target
                prior = priors[name]
                if name in self.categorical:
                    target = target.long()
                    nll = -prior[target]
                    add(sums["training_prior"][0], {name: objective.summed(name, nll, target, mask)})
                    mode = int(prior[FIRST_ID:].argmax()) + FIRST_ID
                    for kind, guess in (("last_value", last.long()), ("training_prior", mode)):
                        right = (target == guess) & (guess >= FIRST_ID) & mask  # as the model's accuracy
                        add(sums[kind][1], {name: (right.sum(), mask.sum())})
                else:
                    loss = REAL_LOSSES[objective.criteria[name]]
                    for kind, guess in (
                        ("last_value", last.float()),
                        ("training_prior", prior.expand_as(target)),
                    ):
                        if objective.criteria[name] == "GaussianNLLLoss":  # the data's variance: 1
                            guess = torch.stack((guess, torch.ones_like(guess)), dim=-1)
                        per_item = loss(guess, target.float(), reduction="none")
                        add(sums[kind][0], {name: objective.summed(name, per_item, target, mask)})
        found = {}
        for kind, (losses, right) in sums.items():
            per_target = means(self.process, losses, self.targets, self.device)  # every rank, every name
            found[kind] = {
                "loss": weighted_total(self.weights, per_target),
                "losses": per_target,
                "accuracy": means(self.process, right, self.categorical, self.device),
            }
        found["best"] = self._best(found)
        return found

    def _best(self, found: dict) -> dict:
        """Per target the lowest baseline loss and the highest accuracy, and their total."""

        def pick(values, choose):
            values = [v for v in values if not math.isnan(v)]
            return choose(values) if values else math.nan

        losses = {n: pick([f["losses"][n] for f in found.values()], min) for n in self.targets}
        accuracy = {n: pick([f["accuracy"][n] for f in found.values()], max) for n in self.categorical}
        return {"loss": weighted_total(self.weights, losses), "losses": losses, "accuracy": accuracy}

    def _priors(self, metadata: Metadata) -> dict:
        """Per target, what the training split alone predicts: log class frequencies (add-one
        smoothed over the classes that can occur, so that a class unseen in training is not
        infinitely unlikely), or the training mean in the model's scale."""
        priors = {}
        for name in self.targets:
            if name in self.categorical:
                counts = np.asarray(metadata.training_class_counts[name], dtype=np.float64)
                possible = np.zeros_like(counts)
                possible[[OTHER_ID, *metadata.id_maps[name].values()]] = 1  # not padding, not mask
                smoothed = (counts + 1) * possible
                priors[name] = torch.tensor(np.log(np.maximum(smoothed / smoothed.sum(), 1e-30)))
            else:
                shift, scale = metadata.scale(name)  # to the model's scale
                mean = (metadata.training_statistics[name]["mean"] - shift) / scale
                priors[name] = torch.tensor(mean, dtype=torch.float32)
            priors[name] = priors[name].to(self.device, torch.float32)
        return priors
