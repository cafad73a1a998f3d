"""Outputs belong to the input they were written from.

Two inputs with the same name (a/data.csv and b/data.csv, or data.csv and data.parquet) write
to the same metadata and window paths. Before a run replaces them, it checks that they were
written from its own input: the metadata names its input (data_path), and the windows carry
the fingerprint of their metadata. Outputs of an earlier version, or unreadable, are replaced.
"""

import os
from pathlib import Path

from sequifier.data.fingerprints import stored_fingerprint
from sequifier.errors import ConfigError
from sequifier.files import read_json


def _recorded(metadata_path: Path):
    """The metadata file's content as a dict; None when there is none or it cannot be read."""
    try:
        found = read_json(metadata_path)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _same_input(recorded: str, ours: str) -> bool:
    return os.path.normpath(str(recorded)) == os.path.normpath(str(ours))


def check_outputs(plan) -> None:
    """Refuse to replace a metadata file or windows that another input wrote (`plan`: a preprocess Plan)."""
    ours = plan.config["data_path"]
    advice = "set output_path and metadata_config_path for one of them, or rename one"
    recorded = _recorded(plan.metadata_path) if plan.metadata_path.is_file() else None
    if recorded is not None and "data_path" in recorded and not _same_input(recorded["data_path"], ours):
        raise ConfigError(
            f"{plan.source}: {plan.metadata_path} was written from the input {recorded['data_path']}, and "
            f"this run's input {ours} (data_path) would replace it and its windows (both are named "
            f"'{plan.name}'); {advice}"
        )
    expected = recorded.get("fingerprint") if recorded else None
    for k in range(len(plan.config["split_ratios"])):
        path = plan.split_path(k)
        if not path.exists():
            continue
        found = stored_fingerprint(path)
        if found is not None and found != expected:
            owner = f"metadata of fingerprint {found}, not {plan.metadata_path}"
            raise ConfigError(
                f"{plan.source}: {path} holds windows written with {owner} (the metadata of this run's "
                f"input, {ours}); another input named '{plan.name}' wrote them: {advice}, or delete {path} "
                "if it is stale"
            )
