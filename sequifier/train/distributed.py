"""One DDP launch path: `torchrun --nproc_per_node=N -m sequifier train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process.
nccl on cuda, gloo on cpu. Only rank 0 logs, checkpoints and exports.
"""

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sequifier.devices import device_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: str, source: str) -> Process:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = device_of(device, source, local_rank=local_rank, world=world)
    if world > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Process(rank, world, chosen)


def stop(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(process: Process, values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (the tensor itself in one process)."""
    if process.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_extremes(process: Process, value: torch.Tensor) -> tuple:
    """(min, max) of a one-element tensor over ranks."""
    low, high = value.clone(), value.clone()
    if process.distributed:
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return low.item(), high.item()


def agreed(process: Process, flags: list, device: torch.device) -> list:
    """Yes/no flags that hold on any rank, the same on every rank (the flags themselves in one process)."""
    if not process.distributed:
        return [bool(flag) for flag in flags]
    values = torch.tensor([float(bool(flag)) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def gathered(process: Process, sums: dict) -> list:
    """Every rank's loss sums ({name: tensor}), on the CPU, in the order of the ranks."""
    mine = {key: value.detach().cpu() for key, value in sums.items()}
    if not process.distributed:
        return [mine]
    found = [None] * process.world
    dist.all_gather_object(found, mine)
    return found


def check_replicas(process: Process, model: torch.nn.Module) -> None:
    """Under DDP every rank must end with the same weights: say so, or fail loudly."""
    if not process.distributed:
        return
    checksum = sum(p.detach().double().sum() for p in model.parameters()).reshape(1)
    low, high = all_extremes(process, checksum)
    if low != high:
        raise RuntimeError(f"DDP ranks diverged: weight checksums from {low!r} to {high!r}")
    log.info("the %d ranks end with identical weights (checksum %.10g)", process.world, high)
