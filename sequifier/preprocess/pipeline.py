"""`sequifier preprocess`: run every step of preprocessing, parts in parallel, outputs atomically.

Intermediate files live in a work folder; the windows and the metadata are moved to their
places only when everything succeeded. `continue_preprocessing` resumes from the work folder of
an interrupted run, skipping the steps already done.
"""

import logging
import multiprocessing
import os
import select
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sequifier.data.metadata import Metadata
from sequifier.errors import (
    SPACE,
    ConfigError,
    DataError,
    EnvironmentFailure,
    ResourceError,
    error_number,
    os_failure,
)
from sequifier.files import content_hash, locked, publish, read_json, remove, write_json
from sequifier.interrupts import uninterrupted
from sequifier.preprocess import steps
from sequifier.preprocess.ownership import check_outputs
from sequifier.preprocess.plan import Plan, make_plan, recorded_config

logger = logging.getLogger(__name__)


def _fingerprint(plan: Plan) -> dict:
    """What the work folder was made from: config, input files, parts and precomputed id maps."""
    files = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in plan.files]
    id_maps = {str(path): content_hash([path]) for path in plan.id_map_paths()}
    return {
        "config": recorded_config(plan.config),
        "files": files,
        "n_parts": plan.n_parts,
        "id_maps": id_maps,
    }


def _prepare_work(plan: Plan) -> None:
    marker = plan.work / "fingerprint.json"
    fingerprint = _fingerprint(plan)
    if plan.config["continue_preprocessing"] and marker.is_file():
        if read_json(marker) != fingerprint:
            raise ConfigError(
                f"{plan.source}: continue_preprocessing: the work folder {plan.work} was made from another "
                "config or input; delete it or set continue_preprocessing: false"
            )
        logger.info("continuing from %s", plan.work)
        return
    shutil.rmtree(plan.work, ignore_errors=True)
    write_json(marker, fingerprint)


def _missing(items, path_of) -> list:
    """The items whose output does not exist yet (all of them unless continuing)."""
    return [item for item in items if not path_of(item).exists()]


def _merged(plan: Plan, k: int):
    """Where split k is merged to before it is published."""
    return plan.work / "outputs" / plan.split_path(k).name


def _merge(plan: Plan, metadata: Metadata, k: int) -> None:
    steps.merge(plan, metadata, k, _merged(plan, k))


def _run_in_memory(plan: Plan) -> Metadata:
    """One part: keep its rows in memory from scan to windows and write the splits directly.

    The input's hash and the splits' files are made in threads (hashing, Arrow and numpy
    release the GIL), so this uses the machine's cores even without a process pool.
    """
    with ThreadPoolExecutor(len(plan.strides)) as threads:
        input_hash = threads.submit(content_hash, list(plan.files))
        part = steps.scan(plan, 0, write_rows=False)
        metadata = steps.reduce(plan, plan.work / "metadata.json", input_hash.result())
        encoded = steps.encode_part(plan, metadata, part)
        splits = [
            threads.submit(
                steps.write_split, plan, metadata, steps.split_tables(plan, encoded, k), _merged(plan, k)
            )
            for k in range(len(plan.strides))
        ]
        for split in splits:
            split.result()
    return metadata


def _init_worker(level: int, main_pid: int) -> None:
    import pyarrow

    pyarrow.set_cpu_count(1)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True).start()


def _exit_with(main_pid: int) -> None:
    """End this worker when the run's main process has ended, also when it was killed (SIGKILL: an
    out-of-memory kill, a time limit's last step), so that no worker is left holding memory."""
    try:
        handle = os.pidfd_open(main_pid)  # Linux: that very process, whatever reuses its pid later
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        select.select([handle], [], [])
    else:
        while _alive(main_pid):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class _Runner:
    """Runs a step over items, in a pool of `n_cores` processes or in this process."""

    def __init__(self, n_cores: int):
        self.n_cores, self.pool = n_cores, None

    def start(self) -> None:
        if self.n_cores > 1:
            # Workers fork from a server that has imported the steps once; they start now, in the
            # background, so their start-up overlaps the partition step.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["sequifier.preprocess.steps"])
            self.pool = ProcessPoolExecutor(
                self.n_cores,
                mp_context=context,
                initializer=_init_worker,
                initargs=(logging.getLogger().level, os.getpid()),
            )
            for _ in range(self.n_cores):
                self.pool.submit(abs, 0)

    def map(self, description: str, function, items, *args) -> None:
        from tqdm import tqdm

        items = list(items)
        bar = tqdm(total=len(items), desc=description, unit="part", disable=not sys.stderr.isatty())
        if self.pool is None:
            for item in items:
                function(*args, item)
                bar.update()
        else:
            futures = [self.pool.submit(function, *args, item) for item in items]
            try:
                for future in futures:
                    future.result()
                    bar.update()
            except BrokenProcessPool:
                raise ResourceError(
                    f"a worker process died during {description} (killed, perhaps for lack of memory); "
                    "rerun with continue_preprocessing: true, and with fewer n_cores or more n_partitions"
                ) from None
        bar.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def stop(self) -> None:
        """End the worker processes now (Ctrl-C, SIGTERM, a full disk), not after their part."""
        if self.pool is None:
            return
        for process in list((self.pool._processes or {}).values()):
            process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def run(config: dict, source: str = "preprocess config") -> dict:
    """Preprocess the table of `config` (a resolved preprocess config); returns the metadata as the
    file holds it (a dict)."""
    started = time.perf_counter()
    plan = make_plan(config, source)
    owned = f"the outputs of preprocessing {plan.name} (in {plan.output}, metadata {plan.metadata_path})"
    advice = "wait for it, or use another output_path (and metadata_config_path)"
    with locked(
        [plan.work, plan.output / plan.name, plan.metadata_path], owned, "sequifier preprocess", advice
    ):
        return _run_locked(plan, started)


def _run_locked(plan: Plan, started: float) -> dict:
    config = plan.config
    check_outputs(plan)
    _prepare_work(plan)
    n_splits = len(config["split_ratios"])
    runner = _Runner(min(config["n_cores"] or os.cpu_count() or 1, plan.n_parts))
    try:
        with uninterrupted():  # a SIGTERM while the pool starts stops it once it is there
            runner.start()
        if plan.n_parts == 1:
            metadata = _run_in_memory(plan)
        else:
            if plan.partitioned and not plan.part_path(0).parent.is_dir():
                steps.partition(plan)
            runner.map("scan", steps.scan, _missing(range(plan.n_parts), plan.scan_path), plan)
            metadata = steps.reduce(plan, plan.work / "metadata.json")
            runner.map(
                "windows", steps.windows, _missing(range(plan.n_parts), plan.windows_path), plan, metadata
            )
            runner.map("merge", _merge, _missing(range(n_splits), lambda k: _merged(plan, k)), plan, metadata)
    except (ConfigError, DataError):  # bad input: nothing to resume
        runner.close()  # let running workers finish before their folder goes
        shutil.rmtree(plan.work, ignore_errors=True)
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        runner.stop()
        logger.warning(
            "stopped: the worker processes are ended; the work folder %s stays, and "
            "continue_preprocessing: true resumes from it",
            plan.work,
        )
        raise
    except (OSError, EnvironmentFailure) as error:
        if error_number(error) not in SPACE:
            raise
        runner.stop()  # a full disk: what this run wrote goes, so that it does not keep it full
        shutil.rmtree(plan.work, ignore_errors=True)
        failure = error if isinstance(error, EnvironmentFailure) else os_failure(error)
        raise EnvironmentFailure(
            f"{failure}; the work folder {plan.work} is removed, to free its space"
        ) from None
    finally:
        runner.close()
    # The metadata is the commit point: an earlier run's goes first and this run's comes last, so
    # windows are never read with the metadata of other windows.
    remove(plan.metadata_path)
    for k in range(n_splits):
        publish(_merged(plan, k), plan.split_path(k))
    publish(plan.work / "metadata.json", plan.metadata_path)
    shutil.rmtree(plan.work, ignore_errors=True)
    windows = ", ".join(f"{name} {count:,}" for name, count in metadata.n_windows.items())
    logger.info(
        "preprocessed %s rows, %s sequences into windows (%s) in %.1f s; %s; metadata: %s",
        f"{metadata.n_rows:,}",
        f"{metadata.n_sequences:,}",
        windows,
        time.perf_counter() - started,
        other_summary(metadata),
        plan.metadata_path,
    )
    return metadata.to_dict()


def other_summary(metadata: Metadata) -> str:
    """What the summary says of values outside the id maps (read as other, id 1)."""
    found = metadata.other_values
    if not found:
        return "every categorical value is in its id map"
    columns = [
        f"{column} {entry['values']:,} values ({sum(entry['items'].values()):,} items)"
        for column, entry in found.items()
    ]
    return "read as other (not in the id map): " + ", ".join(columns)
