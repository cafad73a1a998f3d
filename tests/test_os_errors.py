"""The operating system says no (a file-size limit, a full disk, a file in the way): one line naming
the path, what failed and what to do, exit 74, no traceback, and nothing half-written left behind."""

import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import made_project, run_cli

TRAIN = ["--set", "training_spec.epochs=1", "--set", "wandb.mode=disabled", "--set", "export_onnx=false"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("os-errors"))


def run_limited(*args, cwd, file_size: int):
    """The CLI under a file-size limit (bytes): a write beyond it fails with EFBIG."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run(
        [sys.executable, "-m", "sequifier", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, preexec_fn=limit,
    )  # fmt: skip


def refused(result, command: str) -> str:
    """The error line of a run the environment refused (exit 74, no traceback)."""
    assert result.returncode == 74, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"sequifier {command}: error: "), result.stderr
    return line


def files_in(folder: Path) -> list:
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.exists()
        else []
    )


def test_a_file_size_limit_in_preprocess_removes_the_work_folder_and_says_so(made):
    config, metadata = (
        made / "configs" / "preprocess.yaml",
        made / "configs" / "metadata_configs" / "example.json",
    )
    before = metadata.read_text()
    args = ["preprocess", "--config-path", config, "--output-path", "limited", "--n-partitions", "2"]
    line = refused(run_limited(*args, cwd=made, file_size=30_000), "preprocess")
    assert "limited/.example-work/" in line and "File too large" in line and "ulimit -f" in line
    assert "the work folder limited/.example-work is removed" in line
    assert files_in(made / "limited") == []
    assert metadata.read_text() == before  # the windows and metadata of the earlier run stay


def test_a_checkpoint_that_cannot_be_written_is_named_and_leaves_no_partial_file(made):
    result = run_limited("train", "--model-name", "capped", *TRAIN, cwd=made, file_size=100_000)
    line = refused(result, "train")
    assert "checkpoints/sequifier-capped-epoch-1.pt: writing failed: File too large" in line
    assert "unexpected pos" not in result.stderr
    assert not list((made / "checkpoints").glob("*capped*"))  # no checkpoint, no temporary, no lock
    assert not list((made / "models").glob("*capped*"))


def test_inference_beyond_a_file_size_limit_leaves_no_output(trained_project):
    args = ["infer", "--output-path", "capped", "--set", "autoregression=false"]
    line = refused(run_limited(*args, cwd=trained_project, file_size=20_000), "infer")
    assert "capped/" in line and "File too large" in line
    assert files_in(trained_project / "capped") == []


def test_an_output_path_that_is_a_file_is_named(made):
    line = refused(run_cli("preprocess", "--output-path", "data/example.csv", cwd=made), "preprocess")
    assert "data/example.csv: File exists; a file or folder is in the way" in line
    line = refused(
        run_cli("train", "--model-name", "m", *TRAIN, "--set", "logs_path=data/example.csv/logs", cwd=made),
        "train",
    )
    assert "data/example.csv" in line and "Not a directory" in line and "a file is in the way" in line
    line = refused(run_cli("make", "data/example.csv/project", cwd=made), "make")
    assert "data/example.csv" in line and "in the way" in line


@contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` at `folder` (root only), unmounted afterwards; skips where mount is refused."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_in_preprocess_frees_what_the_run_wrote(made, tmp_path):
    with small_disk(tmp_path / "disk", "200k") as disk:
        args = ["preprocess", "--output-path", disk / "out", "--n-partitions", "2", "--n-cores", "2"]
        args += ["--metadata-config-path", disk / "metadata.json"]
        line = refused(run_cli(*args, cwd=made), "preprocess")
        assert f"{disk}/out/.example-work/" in line and "No space left on device" in line
        assert "free space on that disk" in line and "is removed, to free its space" in line
        assert files_in(disk) == []
        assert os.statvfs(disk).f_bfree == os.statvfs(disk).f_blocks  # the disk is empty again
