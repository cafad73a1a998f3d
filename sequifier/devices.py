"""The torch device a config names, or a clear error when this machine lacks it."""

import torch

from sequifier.errors import ConfigError


def device_of(name: str, source: str, key: str = "training_spec.device", local_rank: int = 0, world: int = 1):
    """The torch device `name` (config key `key`), or a clear error when this machine lacks it."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{source}: {key}: '{name}', but torch finds no CUDA GPU on this machine "
                f"(torch {torch.__version__}); set {key}: cpu"
            )
        if ":" in name and world > 1:
            raise ConfigError(
                f"{source}: {key}: '{name}' names one GPU, but torchrun started {world} "
                "processes; set device: cuda (each process takes the GPU of its LOCAL_RANK)"
            )
        index = local_rank if ":" not in name else int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{source}: {key}: '{name}', but there are {torch.cuda.device_count()} GPUs")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{source}: {key}: 'mps', but MPS is not available here; set {key}: cpu")
    return torch.device(name)
