"""Training on several nodes of a SLURM job: the launch line built from the job's environment, and
one model trained across the two nodes of the local cluster that matches a two-process run."""

import csv
import os
import re
import subprocess
import sys

import pytest
from conftest import made_project, run_cli

from sequifier.errors import ConfigError, EnvironmentFailure
from sequifier.train import launch
from sequifier.train.lifecycle import launch_command

NODE = (
    "NodeName=gpu07 Arch=x86_64 CoresPerSocket=16\n   NodeAddr=10.1.0.7 NodeHostName=gpu07 Version=22.05.8\n"
)
JOB = "JobId=123456 JobName=train\n   NumNodes=2 NumCPUs=16\n   NodeList=gpu[07-08] BatchHost=gpu07\n"


def scontrol(*args):
    """What scontrol answers on a cluster where job 123456 runs on nodes gpu07 and gpu08."""
    if args[:2] == ("show", "hostnames"):
        assert args[2] == "gpu[07-08]"
        return "gpu07\ngpu08\n"
    if args[:2] == ("show", "job"):
        assert args[2:] == ("123456", "--oneliner")
        return JOB.replace("\n   ", " ")
    assert args == ("show", "node", "gpu07", "--oneliner")
    return NODE.replace("\n   ", " ")


TRAIN = ["--config-path", "run.yaml", "--set", "training_spec.device=cuda"]


def test_a_job_on_two_nodes_runs_a_torchrun_per_node_meeting_on_the_first():
    # inside the one-task step the workflow's job runs in, the environment names the step's node only
    environ = {"SLURM_JOB_ID": "123456", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07"}
    job = launch.slurm_job(environ, ask=scontrol)
    assert job == launch.Job("123456", 2, "10.1.0.7", "gpu[07-08]") and job.endpoint == "10.1.0.7:23456"
    # srun is told the job's nodes, not the step's
    line, env = launch.job_command(TRAIN, 4, environ, nodes=2, ask=scontrol)
    assert env["SLURM_JOB_NODELIST"] == "gpu[07-08]" and env["SLURM_JOB_NUM_NODES"] == "2"
    assert line == launch.command(TRAIN, 4, job) and env["SLURM_NNODES"] == "1"
    assert launch.command(TRAIN, 4, job, python="/env/bin/python") == [
        *("srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--overlap", "--mem=0"),
        *("--kill-on-bad-exit=1", "/env/bin/python", "-m", "torch.distributed.run", "--nnodes=2"),
        *("--nproc_per_node=4", "--rdzv_id=123456", "--rdzv_backend=c10d", "--rdzv_endpoint=10.1.0.7:23456"),
        *("-m", "sequifier", "train", *TRAIN),
    ]
    # jobs that share a first node meet on ports of their own
    assert launch.Job("123457", 2, "h", "h").port == 23457 and launch.Job("133456", 2, "h", "h").port == 23456


def test_a_node_without_an_address_is_reached_by_its_name():
    answers = {"hostnames": "n1\nn2\n", "node": "NodeName=n1 CPUTot=2 State=IDLE\n"}
    assert launch.first_node_address("n[1-2]", lambda *args: answers[args[1]]) == "n1"


def test_one_node_keeps_standalone_torchrun_or_one_process():
    one_node = {"NumNodes": "NumNodes=1 NumCPUs=2 NodeList=n1", "hostnames": "n1"}
    for environ in ({}, {"SLURM_JOB_ID": "7", "SLURM_NNODES": "1"}):
        job = launch.slurm_job(environ, ask=lambda *args: one_node["NumNodes"])
        assert job is None
        assert launch.command(TRAIN, 2, job)[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
        assert launch.command(TRAIN, 1, job, python="py") == ["py", "-m", "sequifier", "train", *TRAIN]


def test_the_workflow_asks_train_launch_for_a_job_on_several_nodes():
    assert launch_command("run.yaml", gpus=0, nodes=2, python="py") == [
        *("py", "-m", "sequifier", "train-launch", "--nodes=2", "--processes=1", "--"),
        *("--config-path", "run.yaml", "--set", "training_spec.device=cpu"),
    ]
    assert launch_command("run.yaml", gpus=8, nodes=2)[4:6] == ["--nodes=2", "--processes=4"]  # a node's
    assert launch_command("run.yaml", gpus=2, nodes=1)[:2] == ["torchrun", "--standalone"]
    with pytest.raises(ConfigError, match="on 2 nodes with 3 GPUs: give each node as many"):
        launch_command("run.yaml", gpus=3, nodes=2)


@pytest.mark.parametrize(
    "environ, answer, message",
    [
        ({}, "", "asks for 2 nodes, but it runs on 1 (outside a SLURM job): submit it with sbatch --nodes=2"),
        (
            {"SLURM_JOB_ID": "9"},
            "NumNodes=1 NodeList=n1",
            "asks for 2 nodes, but it runs on 1 (in SLURM job 9)",
        ),
        ({"SLURM_JOB_ID": "9"}, "JobState=PENDING NodeList=(null)", "expected its NumNodes and NodeList"),
    ],
)
def test_a_launch_that_cannot_reach_its_nodes_says_why(environ, answer, message):
    with pytest.raises(EnvironmentFailure, match=re.escape(message)):
        launch.job_command(TRAIN, 1, environ, nodes=2, ask=lambda *args: answer)


def test_train_launch_outside_a_job_on_two_nodes_is_refused_by_the_cli(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = run_cli("train-launch", "--nodes", "2", "--", "--config-path", "x.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 74 and "Traceback" not in result.stderr
    assert "asks for 2 nodes, but it runs on 1" in result.stderr, result.stderr
    result = run_cli(
        "train-launch", "--processes", "0", "--", "--config-path", "x.yaml", cwd=tmp_path, env=env
    )
    assert result.returncode == 2 and "at least one process per node, not 0" in result.stderr


# The local cluster: two nodes (n1, n2) on this machine.
SETTINGS = ["training_spec.epochs=2", "export_onnx=false", "wandb.mode=disabled", "training_spec.dropout=0.1"]
SETTINGS += ["training_spec.batch_size=32", "training_spec.accumulation_steps=3"]


def train_args(name: str) -> list:
    return ["--model-name", name, *(item for setting in SETTINGS for item in ("--set", setting))]


def validation_losses(root, name) -> list:
    with open(root / "logs" / f"sequifier-{name}-metrics.csv") as handle:
        return [(r["epoch"], r["validation_loss"]) for r in csv.DictReader(handle) if r["kind"] == "epoch"]


def weights_checksum(root, name) -> str:
    log = (root / "logs" / f"sequifier-{name}.log").read_text()
    return re.findall(r"the 2 ranks end with identical weights \(checksum (\S+)\)", log)[-1]


@pytest.mark.slurm
def test_one_model_trained_across_two_nodes_matches_two_processes_on_one(tmp_path):
    made = made_project(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "two-nodes.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --cpus-per-task=1\n"
        f"#SBATCH --partition=cpu\n#SBATCH --time=10\n#SBATCH --output={tmp_path}/job.log\n"
        f"exec {sys.executable} -m sequifier train-launch -- {' '.join(train_args('nodes'))}\n"
    )
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wait", "-D", str(made), str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        job_log = (tmp_path / "job.log").read_text()
        assert submitted.returncode == 0, submitted.stderr + job_log[-3000:]
        assert "--nnodes=2" in job_log and f"--rdzv_id={job_id}" in job_log, job_log[-3000:]
        hosts = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%N"], capture_output=True, text=True
        )
        assert hosts.stdout.strip() == "n[1-2]", hosts

        standalone = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        standalone += ["-m", "sequifier", "train", *train_args("one-node")]
        result = subprocess.run(standalone, cwd=made, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

        across = validation_losses(made, "nodes")
        assert [epoch for epoch, _ in across] == ["0", "1", "2"]
        assert across == validation_losses(made, "one-node")
        assert weights_checksum(made, "nodes") == weights_checksum(made, "one-node")
    finally:
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True)
