"""A training run from its launch to its outcome, as the workflow's train jobs and the search run it.

A run is `sequifier train` of one config, in a process of its own (or torchrun with a process per
GPU), its output in a log. When it guards a checkpoints folder, the stamp of its inputs (the files
it reads and its number of GPUs) lives there, in `inputs.cksum`, while the run is unfinished:
checkpoints under another stamp (or none) are dropped before it starts, so a changed, forced or
finished run trains from scratch, while a killed one resumes from its checkpoints.

Its outcome, by the exit code of the training:
- 0: done; the metrics CSV is copied into place (atomically).
- 2, sequifier's own verdict on bad settings or bad data (a ConfigError or DataError), also under
  torchrun, which returns 1 for a child's 2: every process leaves its verdict in a file next to
  the log (VERDICT_ENV names it), which the run reads: failed; an empty models folder and an empty
  metrics copy stand in for the outputs, so that the runs compared still have them.
- anything else: incomplete. A crash (1: CUDA out of memory, an NCCL timeout, an export error),
  74 when the machine said no (a full disk, a lock held), 75 when a time limit's signal stopped
  training at a checkpoint, a kill by a signal: nothing is written, the stamp and the checkpoints
  stay, the run exits non-zero (the job fails, and Snakemake's retries or the next start resume
  it from its checkpoints). So is a run stopped by Ctrl-C, SIGTERM or SIGUSR1.
In a SLURM job with a time limit the run stops its training ahead of the limit (_deadline_alarm).
A finished run (done or failed) loses its stamp and writes its status JSON: run, status,
exit_code, wall_s, the stamp of the inputs it was trained on and, when failed, the error.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sequifier.errors import VERDICT_ENV, ConfigError
from sequifier.files import atomic_path, content_hash, read_json, remove, write_json
from sequifier.train import launch

STAMP = "inputs.cksum"
STOP_AHEAD_S = 300  # how long before a SLURM job's time limit its training is told to stop, at most
OUTCOMES = {0: "done", 2: "failed"}  # other exit codes: incomplete, resumed by the next start


def launch_command(config_path, gpus=None, resume=False, python="python", nodes=1) -> list[str]:
    """`sequifier train` of a config: one process (the CPU or one GPU), or torchrun with a process
    per GPU (DDP) when gpus > 1 (sequifier.train.launch). With a number of gpus the device is set
    (cuda, or cpu for 0); without, the config's device is used. `resume` continues from the latest
    checkpoint. On `nodes` > 1 (gpus: those of the whole job, as many on each node):
    `sequifier train-launch`, which starts one torchrun per node of the SLURM job it runs in (its
    first node and id are known only there)."""
    train_args = ["--config-path", str(config_path)]
    if gpus is not None:
        train_args += ["--set", f"training_spec.device={'cuda' if gpus >= 1 else 'cpu'}"]
    if resume:
        train_args += ["--set", "training_spec.continue_training=true"]
    if nodes > 1:
        if gpus and gpus % nodes:
            raise ConfigError(
                f"a training on {nodes} nodes with {gpus} GPUs: give each node as many "
                f"(gpu: a multiple of nodes, e.g. {nodes * max(1, gpus // nodes)})"
            )
        per_node = max(1, (gpus or 0) // nodes)
        launcher = [python, "-m", "sequifier", "train-launch", f"--nodes={nodes}", f"--processes={per_node}"]
        return [*launcher, "--", *train_args]
    return launch.command(train_args, max(1, gpus or 1), python=python)


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

    @property
    def verdict(self) -> Path:
        """The file the training's processes leave a bad-input error in (exit 2), next to the log."""
        return Path(f"{self.log}.verdict")

    def environment(self) -> dict:
        """The environment of the training: this one, with the file of its verdict and the threads
        of each process: the CPUs SLURM grants per GPU (--cpus-per-gpu) in a GPU job, else the
        job's threads split between its processes."""
        found = {**os.environ, VERDICT_ENV: str(self.verdict)}
        per_gpu = os.environ.get("SLURM_CPUS_PER_GPU", "")
        if self.gpus >= 1 and per_gpu.isdigit() and int(per_gpu) >= 1:
            return {**found, "OMP_NUM_THREADS": per_gpu}
        if self.threads is None:
            return found
        per_process = max(1, self.threads // max(1, self.gpus))
        return {**found, "OMP_NUM_THREADS": str(per_process)}

    def begin(self) -> bool:
        """Forget the last outcome, take the stamp of the inputs the run trains on, and keep the
        checkpoints only when they carry the same stamp; returns whether they were kept."""
        remove(self.status)
        remove(self.verdict)
        self.started_on = self.stamp()
        if self.checkpoints is None:
            return False
        stamp_path, stamp = Path(self.checkpoints) / STAMP, self.started_on
        if stamp_path.is_file() and stamp_path.read_text().strip() == stamp:
            return True
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        with atomic_path(stamp_path) as tmp:
            tmp.write_text(stamp + "\n")
        return False

    def start(self) -> subprocess.Popen:
        """Begin, and launch the training in the background, its output in the log (after that of
        the attempts it resumes, which say why they stopped)."""
        resumes = self.begin()
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a" if resumes else "w") as output:
            return subprocess.Popen(
                self.command, stdout=output, stderr=subprocess.STDOUT, env=self.environment()
            )

    def finish(self, exit_code: int, wall_s: float, stopped: bool = False) -> str | None:
        """Record the outcome of the training; returns the status, or None when it is incomplete
        (a crash, a kill, or `stopped` by Ctrl-C, SIGTERM or SIGUSR1)."""
        error = self.verdict.read_text().strip() if self.verdict.is_file() else None
        status = OUTCOMES.get(2 if exit_code and error else exit_code)
        remove(self.verdict)
        if status is None or (stopped and status == "failed"):
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
        if status == "failed" and error:
            record["error"] = error
        write_json(self.status, record)  # then the stamp goes: a kill in between keeps the checkpoints
        if self.checkpoints is not None:
            remove(Path(self.checkpoints) / STAMP)
        return status

    def run_to_end(self) -> int:
        """Start, wait for the training and finish; returns 0 when an outcome was recorded (done or
        failed), else the training's exit code as a shell reports it.

        A Ctrl-C reaches the training as well (the same process group): the run waits for it to
        save its checkpoint and exit. SIGTERM (a time limit) and SIGUSR1 (sent ahead of one) are
        passed on to the training as SIGTERM, which torchrun passes on to its processes: they
        save a checkpoint at the next batch boundary and exit 75."""
        started, stopped, process = time.monotonic(), [], None

        def on_signal(number, frame):  # a time limit: stop the training too
            stopped.append(number)
            if process is not None:
                process.terminate()

        numbers = (signal.SIGTERM, signal.SIGUSR1)
        previous = {number: signal.signal(number, on_signal) for number in numbers}
        deadline = _deadline_alarm()
        try:
            process = self.start()
            if stopped:
                process.terminate()
            exit_code = _wait(process, stopped)
        finally:
            if deadline is not None:
                deadline.cancel()
            for number, handler in previous.items():
                signal.signal(number, handler)
        status = self.finish(exit_code, time.monotonic() - started, stopped=bool(stopped))
        if status is None and stopped:  # as the signal says, whatever torchrun made of it
            return 128 + int(stopped[0])
        return 0 if status is not None else shell_exit_code(exit_code)


def slurm_seconds_left(text: str) -> int | None:
    """The seconds of squeue's time left ('%L': [D-][HH:]MM:SS), None for none ('UNLIMITED')."""
    found = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if found is None:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _deadline_alarm() -> threading.Timer | None:
    """In a SLURM job with a time limit: SIGUSR1 to this process a while before the limit (a third
    of the time left, at most STOP_AHEAD_S), so that the training stops at a checkpoint in time.
    SLURM's own signals do not reach it early: a --signal for the job steps also reaches the
    job's Snakemake, which it ends, and one for the batch shell (B:) ends the job at once."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or shutil.which("squeue") is None:
        return None
    try:
        answer = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    left = slurm_seconds_left(answer.stdout) if answer.returncode == 0 else None
    if left is None:
        return None
    pid = os.getpid()
    alarm = threading.Timer(max(0, left - min(STOP_AHEAD_S, left / 3)), os.kill, (pid, signal.SIGUSR1))
    alarm.daemon = True
    alarm.start()
    return alarm


def _wait(process: subprocess.Popen, stopped: list) -> int:
    """The exit code of the process, waiting on through a Ctrl-C (noted in `stopped`)."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            stopped.append(signal.SIGINT)
