"""How a training is launched: one process, torchrun on one node, or one torchrun per node of a
SLURM job that has several.

- One node, one process: `python -m sequifier train ...`.
- One node, N processes (a process per GPU, or N on the CPU): `torchrun --standalone
  --nproc_per_node=N -m sequifier train ...`.
- Several nodes (a SLURM job whose NumNodes > 1): `srun` starts one torchrun per node
  (`--ntasks-per-node=1`), and the torchruns meet in a c10d rendezvous on the job's first node
  (the first of `scontrol show hostnames` of the job's NodeList, reached at its NodeAddr), on a
  port taken from the job id, so that two jobs that share a first node (or two nodes on one host)
  do not collide. torchrun gives each process its RANK and LOCAL_RANK: its GPU, or the CPU with gloo.

`sequifier train-launch` runs `job_command` inside a job: the workflow's train jobs on several
nodes and a user's own sbatch script use the same line.
"""

import subprocess
from dataclasses import dataclass
from typing import Callable

from sequifier.errors import ConfigError, EnvironmentFailure

PORTS = (20000, 10000)  # the rendezvous port: PORTS[0] + the job id modulo PORTS[1]


@dataclass(frozen=True)
class Job:
    """The SLURM job a launch runs in: its id, its number of nodes, its first node's address and
    its node list."""

    job_id: str
    nodes: int
    head: str
    nodelist: str

    def environment(self, environ: dict) -> dict:
        """`environ` with the job's nodes where srun reads them: inside a one-task step they name
        the step's node only, and srun would refuse a step on more ("Only allocated 1 nodes")."""
        return {**environ, "SLURM_JOB_NODELIST": self.nodelist, "SLURM_JOB_NUM_NODES": str(self.nodes)}

    @property
    def port(self) -> int:
        return PORTS[0] + int(self.job_id) % PORTS[1] if self.job_id.isdigit() else PORTS[0]

    @property
    def endpoint(self) -> str:
        return f"{self.head}:{self.port}"


def scontrol(*args: str) -> str:
    """The output of `scontrol ARGS`, or an EnvironmentFailure that says why there is none."""
    try:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EnvironmentFailure(f"scontrol {' '.join(args)}: {error}") from None
    if result.returncode != 0:
        raise EnvironmentFailure(f"scontrol {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def first_node_address(nodelist: str, ask: Callable[..., str] = scontrol) -> str:
    """The address of the first node of a SLURM node list: its NodeAddr (the host SLURM reaches it
    at; several nodes may share one), else its name."""
    names = ask("show", "hostnames", nodelist).split()
    if not names:
        raise EnvironmentFailure(f"scontrol show hostnames {nodelist!r}: no node")
    for field in ask("show", "node", names[0], "--oneliner").split():
        key, _, value = field.partition("=")
        if key == "NodeAddr" and value:
            return value
    return names[0]


def slurm_job(environ: dict, ask: Callable[..., str] = scontrol) -> Job | None:
    """The SLURM job of this environment (SLURM_JOB_ID) when it has several nodes, else None.
    Its nodes are asked of SLURM (`scontrol show job`), not read from the environment: inside a
    one-task step (as the workflow's jobs run, with the job's variables left out) SLURM_NNODES
    and SLURM_JOB_NODELIST are the step's, one node."""
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    fields = dict(field.partition("=")[::2] for field in ask("show", "job", job_id, "--oneliner").split())
    nodes, nodelist = fields.get("NumNodes", "").split("-")[0], fields.get("NodeList", "")
    if not nodes.isdigit() or int(nodes) < 1 or nodelist in ("", "(null)"):
        raise EnvironmentFailure(
            f"scontrol show job {job_id}: expected its NumNodes and NodeList, got "
            f"NumNodes={fields.get('NumNodes')!r} NodeList={fields.get('NodeList')!r}"
        )
    if int(nodes) == 1:
        return None
    return Job(job_id, int(nodes), first_node_address(nodelist, ask), nodelist)


def command(
    train_args: list[str], processes: int, job: Job | None = None, python: str = "python"
) -> list[str]:
    """The line that trains with `train_args` (what follows `sequifier train`): `processes` per node
    (1: no torchrun on one node), on the nodes of `job` (None: this machine)."""
    if processes < 1:
        raise ConfigError(f"a training needs at least one process per node, not {processes}")
    if job is not None:
        srun = ["srun", f"--nodes={job.nodes}", f"--ntasks={job.nodes}", "--ntasks-per-node=1"]
        # --overlap --mem=0: beside the one-task step it may run in, with the memory of the job's nodes;
        # when one torchrun fails, the other stops too
        srun += ["--overlap", "--mem=0", "--kill-on-bad-exit=1"]
        torchrun = [
            python,
            "-m",
            "torch.distributed.run",
            f"--nnodes={job.nodes}",
            f"--nproc_per_node={processes}",
        ]
        torchrun += [f"--rdzv_id={job.job_id}", "--rdzv_backend=c10d", f"--rdzv_endpoint={job.endpoint}"]
        return [*srun, *torchrun, "-m", "sequifier", "train", *train_args]
    if processes > 1:
        return [
            "torchrun",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "sequifier",
            "train",
            *train_args,
        ]
    return [python, "-m", "sequifier", "train", *train_args]


def job_command(
    train_args: list[str], processes: int, environ: dict, nodes=None, python="python", ask=scontrol
):
    """The line for the job of `environ`, and the environment to run it in; `nodes`, when given,
    is the number of nodes the job must have (a train job that asked for them)."""
    job = slurm_job(environ, ask)
    found = 1 if job is None else job.nodes
    if nodes is not None and nodes != found:
        where = (
            "outside a SLURM job"
            if "SLURM_JOB_ID" not in environ
            else f"in SLURM job {environ['SLURM_JOB_ID']}"
        )
        raise EnvironmentFailure(
            f"the training asks for {nodes} nodes, but it runs on {found} ({where}): "
            f"submit it with sbatch --nodes={nodes} --ntasks-per-node=1"
        )
    line = command(train_args, processes, job, python=python)
    return line, dict(environ) if job is None else job.environment(environ)
