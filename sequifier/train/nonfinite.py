"""Optimizer steps whose loss or gradients are not finite: skipped (the weights are not updated),
counted in a row, and training stopped with a clear message after training_spec.max_nonfinite_steps
of them. Every process decides the same: the flag is summed over the processes (DDP)."""

import math

import torch

from sequifier.errors import NumericError
from sequifier.train import distributed


def finite_step(process, group_sums: dict, grad_norm: torch.Tensor | None) -> bool:
    """Whether the losses of an optimizer step's batches ({target: [sum, count]}) and the gradient
    norm (None: not checked) are finite on every process."""
    values = [found[0].reshape(1) for found in group_sums.values()]
    if grad_norm is not None:
        values.append(grad_norm.detach().float().reshape(1))
    bad = (~torch.isfinite(torch.cat(values))).any().float().reshape(1)
    return distributed.all_sum(process, bad).item() == 0


def _figure(value: float) -> str:
    return f"{value:.5g}" if math.isfinite(value) else str(value)


def stop_error(source, epoch: int, batches: range, group_sums: dict, grad_norm, count: int, limit: int, last):
    """The error that stops training after `count` non-finite steps in a row, the last over the
    batches `batches` of `epoch`; `last` is the newest checkpoint (or None)."""
    losses = ", ".join(
        f"{name} {_figure((total / n).item() if n else math.nan)}" for name, (total, n) in group_sums.items()
    )
    norm = "" if grad_norm is None else f", gradient norm {_figure(grad_norm.item())}"
    left = f"the last checkpoint is {last}" if last is not None else "no checkpoint was written yet"
    where = f"batch {batches.stop}" if len(batches) == 1 else f"batches {batches.start + 1}-{batches.stop}"
    return NumericError(
        f"{source}: training stopped: the loss or its gradient is not finite in epoch {epoch}, {where} "
        f"(losses of this process: {losses}{norm}), {count} optimizer step(s) in a row "
        f"(training_spec.max_nonfinite_steps: {limit}); the weights are those of the last finite step and "
        f"{left}; lower training_spec.learning_rate (or gradient_clip), or check the data "
        "(the real columns' statistics in the metadata)"
    )
