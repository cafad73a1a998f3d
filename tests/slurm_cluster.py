"""The local SLURM cluster of scripts/slurm-cluster, for the tests marked `slurm`: whether it is up
(they skip with the reason when it is not), its jobs, and cancelling what a test submitted."""

import functools
import subprocess

from conftest import REPO

SCRIPT = REPO / "scripts" / "slurm-cluster"


@functools.cache
def down_reason() -> str | None:
    """None when both nodes of the cluster answer, else why the SLURM tests cannot run."""
    try:
        status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{SCRIPT.name} status: {error}"
    if status.returncode == 0:
        return None
    why = (status.stderr.strip().splitlines() or ["no answer"])[-1].removeprefix("slurm-cluster: ")
    return f"no SLURM cluster ({why}); start it with scripts/slurm-cluster (needs root and apt)"


def jobs_of(folder) -> dict:
    """{job id: (comment, state)} of the jobs submitted from a folder (their working directory),
    finished ones included (the cluster keeps them for MinJobAge). The snakemake plugin's comment
    names the rule and wildcards: rule_train_wildcards_RUN."""
    command = ["squeue", "-h", "-t", "all", "-o", "%i|%k|%T|%Z"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    found = (line.split("|") for line in lines)
    return {job: (comment.strip(), state) for job, comment, state, workdir in found if workdir == str(folder)}


def cancel(*job_ids) -> None:
    """Cancel the given jobs (those still queued or running); a finished one is left as it is."""
    if job_ids:
        subprocess.run(["scancel", *map(str, job_ids)], capture_output=True)
