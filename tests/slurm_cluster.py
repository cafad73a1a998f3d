"""The local SLURM cluster of scripts/slurm-cluster, for the tests marked `slurm`: whether it is up
(they skip with the reason when it is not), the workflow's slurm profile fitted to it, its jobs,
and cancelling what a test submitted."""

import functools
import subprocess

import yaml
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


def cluster_profile(root, **train) -> list:
    """The --profile arguments of workflow/profiles/slurm (in `root`) with only the values of the
    local cluster changed: its partitions, memory and CPUs, squeue for the job states (no
    accounting), status checks every 2 s (it answers at once); the train job's values updated with
    `train` (a key `retries`: the profile's retries). In a profile folder of its own."""
    profile = yaml.safe_load((root / "workflow/profiles/slurm/config.yaml").read_text())
    profile |= {"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1}
    profile |= {"seconds-between-status-checks": 2, "slurm-keep-successful-logs": True}
    profile["retries"] = train.pop("retries", profile["retries"])
    resources = {"slurm_partition": "cpu", "runtime": 10, "mem_mb_per_cpu": 1000, "cpus_per_gpu": 1}
    profile["default-resources"].update(resources)
    profile["set-threads"]["train"] = 1
    profile["set-resources"]["train"].update({"slurm_partition": "cpu", "gpu": 0, "runtime": 10, **train})
    folder = root / "cluster-profile"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return ["--profile", str(folder)]
