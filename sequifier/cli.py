"""`sequifier make|preprocess ...`: parse flags, load the config, run the stage.

Nothing heavy is imported at start-up: each command imports its stage when it runs, so
`sequifier --help` answers at once.
"""

import argparse
import logging
import random
import sys

PUBLIC_COMMANDS = "{make,preprocess,train,infer,hyperparameter-search}"


def _none_or_list(values):
    return None if values == ["None"] else values


def _add_preprocess_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-path", default="configs/preprocess.yaml", help="preprocess config (YAML)")
    parser.add_argument("--project-root", help="folder the config's paths are relative to")
    parser.add_argument(
        "--data-path",
        "-dp",
        help="input table, a file or a folder, relative to the project root (overrides data_path)",
    )
    parser.add_argument(
        "--selected-columns", "-sc", nargs="+", help="feature columns to keep; None keeps all"
    )
    parser.add_argument("--seed", "-s", type=int, help="seed of the between_sequence split")
    parser.add_argument("--randomize", "-r", action="store_true", help="use a random seed")
    parser.add_argument("--output-path", help="folder of the windows (overrides output_path)")
    parser.add_argument("--metadata-config-path", "-mc", help="where the metadata goes")
    parser.add_argument("--work-path", help="folder of intermediate files")
    parser.add_argument("--n-cores", type=int, help="processes working in parallel")
    parser.add_argument("--n-partitions", type=int, help="parts the table is split into")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-path", default="configs/train.yaml", help="train config (YAML)")
    parser.add_argument("--project-root", help="folder the config's paths are relative to")
    parser.add_argument(
        "--data-path", "-dp", help="training windows, a file or a folder (overrides training_data_path)"
    )
    parser.add_argument("--validation-data-path", help="validation windows (overrides validation_data_path)")
    parser.add_argument("--input-columns", "-ic", nargs="+", help="columns the model reads; None reads all")
    parser.add_argument("--metadata-config-path", "-mc", help="metadata written by preprocess")
    parser.add_argument("--model-name", "-mn", help="name in the files written")
    parser.add_argument("--seed", "-s", type=int, help="seed of initialization, data order and dropout")
    parser.add_argument("--randomize", "-r", action="store_true", help="use a random seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key by its dotted path, the value read as YAML (repeatable)",
    )


def _add_infer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-path", default="configs/infer.yaml", help="infer config (YAML)")
    parser.add_argument("--project-root", help="folder the config's paths are relative to")
    parser.add_argument(
        "--data-path", "-dp", help="windows to infer on, a file or a folder (overrides data_path)"
    )
    parser.add_argument(
        "--model-path", "-mp", nargs="+", help="model files (.pt or .onnx), each with its own outputs"
    )
    parser.add_argument("--metadata-config-path", "-mc", help="metadata of the data (default: the model's)")
    parser.add_argument(
        "--input-columns", "-ic", nargs="+", help="columns the model reads (must be the model's)"
    )
    parser.add_argument("--output-path", help="folder of the outputs (overrides output_path)")
    parser.add_argument("--seed", "-s", type=int, help="seed of sampling and Monte-Carlo dropout")
    parser.add_argument("--randomize", "-r", action="store_true", help="use a random seed")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, the value read as YAML (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sequifier",
        description="Train causal transformers on tables of sequences: make, preprocess, train, infer, "
        "hyperparameter-search.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar=PUBLIC_COMMANDS)

    make = commands.add_parser("make", help="create a project folder with configs and example data")
    make.add_argument("name", help="folder to create (must not exist)")

    preprocess = commands.add_parser("preprocess", help="turn a table of sequences into training windows")
    _add_preprocess_flags(preprocess)

    train = commands.add_parser("train", help="train a model on preprocessed windows (torchrun for DDP)")
    _add_train_flags(train)

    infer = commands.add_parser("infer", help="apply trained models: predictions, probabilities, embeddings")
    _add_infer_flags(infer)

    search = commands.add_parser(
        "hyperparameter-search", help="train every point of a search space and rank the runs"
    )
    search.add_argument(
        "--config-path",
        default="configs/hyperparameter-search.yaml",
        help="hyperparameter-search config (YAML)",
    )
    search.add_argument("--project-root", help="folder the config's paths are relative to")
    search.add_argument("--search-name", help="name of the search (overrides search_name)")
    search.add_argument("--jobs", "-j", type=int, default=1, help="runs trained at the same time")
    search.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )

    step = commands.add_parser("preprocess-step")  # one step of preprocess, for the workflow
    step.add_argument("step", choices=["partition", "scan", "reduce", "windows", "merge"])
    step.add_argument("--part", type=int, help="part index (scan, windows)")
    step.add_argument("--split", type=int, help="split index (merge)")
    _add_preprocess_flags(step)

    launch = commands.add_parser(
        "train-launch", help="train on every node of the SLURM job it runs in (one torchrun per node)"
    )
    launch.add_argument(
        "--processes", type=int, default=1, help="processes per node: its GPUs, or 1 on the CPU"
    )
    launch.add_argument("--nodes", type=int, help="the nodes the job must have (default: those it has)")
    launch.add_argument(
        "train_args", nargs="*", metavar="ARGS", help="after --: the flags of `sequifier train`"
    )

    lifecycle = commands.add_parser("train-run")  # a training run from launch to outcome, for the workflow
    _add_train_run_flags(lifecycle)
    return parser


def _add_train_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the run's id, in its status")
    parser.add_argument("--status", required=True, help="status JSON, written when the run finishes")
    parser.add_argument("--log", required=True, help="the training's output")
    parser.add_argument("--inputs", nargs="+", default=[], help="files the stamp of the inputs covers")
    parser.add_argument("--checkpoints", help="the run's own checkpoints folder, guarded by the stamp")
    parser.add_argument("--metrics", help="the metrics CSV training writes")
    parser.add_argument("--metrics-copy", help="where the metrics CSV is copied when the run is done")
    parser.add_argument("--models", help="the models folder, made empty when the run fails")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the run, in its stamp (0: the CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads, split between the processes")
    parser.add_argument(
        "training", nargs="+", metavar="COMMAND", help="after --: the training (`sequifier train`, torchrun)"
    )


def _flag_overrides(args, flags: dict, columns: str) -> dict:
    """Config overrides from the flags given: `flags` maps flag names to config keys; `columns` is
    the list flag where `None` means null."""
    overrides = {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None}
    if getattr(args, columns) is not None:
        overrides[columns] = _none_or_list(getattr(args, columns))
    if args.randomize:
        overrides["seed"] = random.randrange(2**31)
    return overrides


PREPROCESS_FLAGS = {
    name: name
    for name in (
        "project_root", "data_path", "output_path", "seed", "metadata_config_path", "work_path", "n_cores",
        "n_partitions",
    )
}  # fmt: skip
INFER_FLAGS = {
    name: name for name in ("project_root", "data_path", "metadata_config_path", "output_path", "seed")
} | {"model_path": "model_path"}
TRAIN_FLAGS = {
    "project_root": "project_root",
    "data_path": "training_data_path",
    "validation_data_path": "validation_data_path",
    "metadata_config_path": "metadata_config_path",
    "model_name": "model_name",
    "seed": "seed",
}


def _set_overrides(items: list) -> dict:
    """`--set a.b=VALUE` pairs, the values read as YAML."""
    from sequifier.config import parse_yaml
    from sequifier.errors import ConfigError

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training_spec.epochs=5")
        overrides[key] = parse_yaml(value, f"--set {item!r}", "; the value is read as YAML: quote text in it")
    return overrides


def _run_preprocess_step(args, config) -> None:
    from sequifier.data.metadata import Metadata
    from sequifier.errors import ConfigError
    from sequifier.preprocess import steps
    from sequifier.preprocess.plan import make_plan

    plan = make_plan(config, args.config_path)
    needs = {"scan": "part", "windows": "part", "merge": "split"}
    if args.step in needs and getattr(args, needs[args.step]) is None:
        raise ConfigError(f"preprocess-step {args.step} needs --{needs[args.step]}")
    if args.step == "partition":
        steps.partition(plan)
    elif args.step == "scan":
        steps.scan(plan, args.part)
    elif args.step == "reduce":
        from sequifier.preprocess.ownership import check_outputs

        check_outputs(plan)  # before the metadata of another input's run could be replaced
        steps.reduce(plan, plan.metadata_path)
    elif args.step == "windows":
        steps.windows(plan, Metadata.load(plan.metadata_path), args.part)
    else:
        steps.merge(plan, Metadata.load(plan.metadata_path), args.split, plan.split_path(args.split))


def _run_train_run(args) -> None:
    from pathlib import Path

    from sequifier.errors import ConfigError
    from sequifier.train.lifecycle import Run

    if (args.metrics is None) != (args.metrics_copy is None):
        raise ConfigError("train-run: --metrics and --metrics-copy go together")
    paths = {
        key: None if getattr(args, key) is None else Path(getattr(args, key))
        for key in ("status", "log", "checkpoints", "metrics", "metrics_copy", "models")
    }
    run = Run(args.run, args.training, gpus=args.gpus, threads=args.threads, inputs=args.inputs, **paths)
    sys.exit(run.run_to_end())


def _run_train_launch(args) -> None:
    """Replace this process by the training's launch line for the job it runs in."""
    import os

    from sequifier.errors import EnvironmentFailure
    from sequifier.train.launch import job_command

    command, environ = job_command(
        args.train_args, args.processes, os.environ, args.nodes, python=sys.executable
    )
    print(f"sequifier train-launch: {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, environ)
    except OSError as error:
        raise EnvironmentFailure(f"cannot start {command[0]}: {error.strerror}") from None


def _dispatch(args) -> None:
    if args.command == "make":
        from sequifier.make import make

        make(args.name)
        return
    if args.command == "train-run":
        _run_train_run(args)
        return
    if args.command == "train-launch":
        _run_train_launch(args)
        return
    from sequifier import config

    if args.command == "train":
        from sequifier.train.session import run

        overrides = {**_set_overrides(args.set), **_flag_overrides(args, TRAIN_FLAGS, "input_columns")}
        run(config.load("train", args.config_path, overrides), args.config_path)
        return
    if args.command == "hyperparameter-search":
        from sequifier.search.runner import run

        flags = {"project_root": "project_root", "search_name": "search_name"}
        overrides = {**_set_overrides(args.set)}
        overrides |= {
            key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None
        }
        if args.jobs < 1:
            from sequifier.errors import ConfigError

            raise ConfigError(f"--jobs {args.jobs}: expected 1 or more runs at a time")
        run(config.load("hyperparameter-search", args.config_path, overrides), args.config_path, args.jobs)
        return
    if args.command == "infer":
        from sequifier.infer.application import run

        overrides = {**_set_overrides(args.set), **_flag_overrides(args, INFER_FLAGS, "input_columns")}
        run(config.load("infer", args.config_path, overrides), args.config_path)
        return
    overrides = _flag_overrides(args, PREPROCESS_FLAGS, "selected_columns")
    loaded = config.load("preprocess", args.config_path, overrides)
    if args.command == "preprocess":
        from sequifier.preprocess.pipeline import run

        run(loaded, args.config_path)
    else:
        _run_preprocess_step(args, loaded)


def _leave_verdict(message: str) -> None:
    """Bad input (exit 2) in a training run's verdict file, where its lifecycle reads it (under
    torchrun, which returns 1 for a child's 2): see sequifier.train.lifecycle."""
    import os
    from pathlib import Path

    from sequifier.errors import VERDICT_ENV, EnvironmentFailure
    from sequifier.files import atomic_path

    path = os.environ.get(VERDICT_ENV)
    if path:
        try:
            with atomic_path(Path(path)) as tmp:
                tmp.write_text(message + "\n")
        except (OSError, EnvironmentFailure):
            pass  # then the run is incomplete rather than failed: it is tried again


def main(argv=None) -> None:
    """Run a command; exit 2 for bad input, 74 when the machine or another process says no, 130 on
    Ctrl-C, 143 on SIGTERM, and 75 when training stopped for SIGTERM or SIGUSR1 at a batch boundary
    with its checkpoint saved (see sequifier.errors and sequifier.interrupts)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sequifier").setLevel(logging.INFO)  # our progress; other libraries' warnings only
    from sequifier.errors import SequifierError, os_failure
    from sequifier.interrupts import Stopped, StoppedToResume, stop_at_boundary, stop_on_sigterm

    if args.command == "train":  # SIGTERM, SIGUSR1: a checkpoint at the next batch boundary, exit 75
        stop_at_boundary()
    elif args.command != "train-run":  # which passes SIGTERM and SIGUSR1 on to its training
        stop_on_sigterm()
    try:
        _dispatch(args)
    except SequifierError as error:
        print(f"sequifier {args.command}: error: {error}", file=sys.stderr)
        if error.exit_code == 2:
            _leave_verdict(f"sequifier {args.command}: error: {error}")
        sys.exit(error.exit_code)
    except OSError as error:
        print(f"sequifier {args.command}: error: {os_failure(error)}", file=sys.stderr)
        sys.exit(74)
    except MemoryError as error:
        print(
            f"sequifier {args.command}: error: out of memory ({error}); give it more memory, or use "
            "smaller parts (n_partitions) or fewer processes (n_cores); continue_preprocessing: true resumes",
            file=sys.stderr,
        )
        sys.exit(74)
    except StoppedToResume as stop:
        print(
            f"sequifier {args.command}: {stop}; its checkpoint is saved, continue_training: true resumes",
            file=sys.stderr,
        )
        sys.exit(stop.exit_code)
    except Stopped:
        print(f"sequifier {args.command}: stopped by SIGTERM", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"sequifier {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
