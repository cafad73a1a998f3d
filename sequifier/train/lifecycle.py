"""A training run from its launch to its outcome, as the workflow's train jobs and the search run it.

A run is `sequifier train` of one config, in a process of its own (or torchrun with a process per
GPU), its output in a log. When it guards a checkpoints folder, the stamp of its inputs (the files
it reads and its number of GPUs) lives there, in `inputs.cksum`, while the run is unfinished:
checkpoints under another stamp (or none) are dropped before it starts, so a changed, forced or
finished run trains from scratch, while a killed one resumes from its checkpoints.

Its outcome, by the exit code of the training:
- 0: done; the metrics CSV is copied into place (atomically).
- 1 or 2 (an error: bad settings, bad data, a crash): failed; an empty models folder and an empty
  metrics copy stand in for the outputs, so that the runs compared still have them.
- anything else (killed by a signal or a time limit, 74 when the machine said no: a full disk, a
  lock held): incomplete; nothing is written, the stamp and the checkpoints stay, and the next
  start resumes. So is a run that received Ctrl-C or
  SIGTERM and did not finish (torchrun exits with 1 when it is stopped).
A finished run (done or failed) loses its stamp and writes its status JSON: run, status,
exit_code, wall_s and the stamp of the inputs it was trained on.
"""

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sequifier.files import atomic_path, content_hash, read_json, remove, write_json

STAMP = "inputs.cksum"
OUTCOMES = {0: "done", 1: "failed", 2: "failed"}  # other exit codes: killed, incomplete


def launch_command(config_path, gpus=None, resume=False, python="python") -> list[str]:
    """`sequifier train` of a config: one process (the CPU or one GPU), or torchrun with a process
    per GPU (DDP) when gpus > 1. With a number of gpus the device is set (cuda, or cpu for 0);
    without, the config's device is used. `resume` continues from the latest checkpoint."""
    launcher = [python, "-m", "sequifier"]
    if gpus is not None and gpus > 1:
        launcher = ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "sequifier"]
    command = [*launcher, "train", "--config-path", str(config_path)]
    if gpus is not None:
        command += ["--set", f"training_spec.device={'cuda' if gpus >= 1 else 'cpu'}"]
    if resume:
        command += ["--set", "training_spec.continue_training=true"]
    return command


def shell_exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: 128 + the signal for one killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Run:
    """One training run and the files of its lifecycle.

    name: the run's id, in its status. command: the training to launch (see launch_command).
    status: the status JSON written when it finishes. log: the training's output (stdout and stderr).
    gpus: the GPUs of the job, in the stamp (the command starts a process per GPU when more than one).
    threads: the CPU threads of the job, split between its processes (OMP_NUM_THREADS); None leaves
    the environment as it is. In a SLURM job with --cpus-per-gpu, each process gets that many.
    inputs: the files its stamp covers. checkpoints: the folder its stamp guards (None: no guard;
    the folder is dropped when the stamp differs, so it must be the run's own).
    metrics: the metrics CSV training writes; metrics_copy: where it is copied when the run is done.
    models: the models folder, made empty when the run fails.
    """

    name: str
    command: list[str]
    status: Path
    log: Path
    gpus: int = 0
    threads: int | None = None
    inputs: list = field(default_factory=list)
    checkpoints: Path | None = None
    metrics: Path | None = None
    metrics_copy: Path | None = None
    models: Path | None = None
    started_on: str | None = field(default=None, init=False)  # the stamp of the inputs at begin()

    def stamp(self) -> str:
        """The content hash of the input files, and the number of GPUs."""
        return f"{content_hash(self.inputs)} gpus={self.gpus}"

    def finished(self) -> bool:
        """Whether the run is done, trained on inputs with the stamp they have now."""
        if not Path(self.status).is_file():
            return False
        status = read_json(self.status)
        return status["status"] == "done" and status.get("inputs") == self.stamp()

    def environment(self) -> dict:
        """The environment of the training: this one, with the threads of each process: the CPUs
        SLURM grants per GPU (--cpus-per-gpu) in a GPU job, else the job's threads split between
        its processes."""
        per_gpu = os.environ.get("SLURM_CPUS_PER_GPU", "")
        if self.gpus >= 1 and per_gpu.isdigit() and int(per_gpu) >= 1:
            return {**os.environ, "OMP_NUM_THREADS": per_gpu}
        if self.threads is None:
            return dict(os.environ)
        per_process = max(1, self.threads // max(1, self.gpus))
        return {**os.environ, "OMP_NUM_THREADS": str(per_process)}

    def begin(self) -> None:
        """Forget the last outcome, take the stamp of the inputs the run trains on, and keep the
        checkpoints only when they carry the same stamp."""
        remove(self.status)
        self.started_on = self.stamp()
        if self.checkpoints is None:
            return
        stamp_path, stamp = Path(self.checkpoints) / STAMP, self.started_on
        if stamp_path.is_file() and stamp_path.read_text().strip() == stamp:
            return
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        with atomic_path(stamp_path) as tmp:
            tmp.write_text(stamp + "\n")

    def start(self) -> subprocess.Popen:
        """Begin, and launch the training in the background, its output in the log."""
        self.begin()
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as output:
            return subprocess.Popen(
                self.command, stdout=output, stderr=subprocess.STDOUT, env=self.environment()
            )

    def finish(self, exit_code: int, wall_s: float, stopped: bool = False) -> str | None:
        """Record the outcome of the training; returns the status, or None when it was killed or
        `stopped` (by Ctrl-C or SIGTERM)."""
        status = OUTCOMES.get(exit_code)
        if status is None or (stopped and status == "failed"):  # torchrun stopped exits with 1
            return None
        if status == "done" and self.metrics_copy is not None:
            with atomic_path(self.metrics_copy) as tmp:
                shutil.copyfile(self.metrics, tmp)
        if status == "failed":
            if self.models is not None:
                Path(self.models).mkdir(parents=True, exist_ok=True)
            if self.metrics_copy is not None:
                with atomic_path(self.metrics_copy) as tmp:
                    tmp.write_text("")
        record = {
            "run": self.name,
            "status": status,
            "exit_code": exit_code,
            "wall_s": round(wall_s, 1),
            "inputs": self.started_on or self.stamp(),
        }
        write_json(self.status, record)  # then the stamp goes: a kill in between keeps the checkpoints
        if self.checkpoints is not None:
            remove(Path(self.checkpoints) / STAMP)
        return status

    def run_to_end(self) -> int:
        """Start, wait for the training and finish; returns 0 when an outcome was recorded (done or
        failed), else the training's exit code as a shell reports it.

        A Ctrl-C reaches the training as well (the same process group): the run waits for it to
        save its checkpoint and exit. A SIGTERM (a time limit) is passed on to the training."""
        started, stopped, process = time.monotonic(), [], None

        def on_term(number, frame):  # a time limit: stop the training too
            stopped.append(number)
            if process is not None:
                process.terminate()

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            process = self.start()
            if stopped:
                process.terminate()
            exit_code = _wait(process, stopped)
        finally:
            signal.signal(signal.SIGTERM, previous)
        status = self.finish(exit_code, time.monotonic() - started, stopped=bool(stopped))
        if status is None and stopped:  # as the signal says, whatever torchrun made of it
            return 128 + int(stopped[0])
        return 0 if status is not None else shell_exit_code(exit_code)


def _wait(process: subprocess.Popen, stopped: list) -> int:
    """The exit code of the process, waiting on through a Ctrl-C (noted in `stopped`)."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            stopped.append(signal.SIGINT)
