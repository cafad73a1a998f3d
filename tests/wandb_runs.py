"""Read an offline W&B run back from its run-*.wandb transaction log, for assertions in tests.

wandb 0.31 no longer ships a Python reader (the old `wandb.sdk.internal.datastore` is gone; reading is
done by the Go `wandb-core`), so this parses the file format directly: a 7-byte header (":W&B", magic
0xBEE1, version 0), then a LevelDB-style log of 32 KiB blocks whose chunks (crc32, length, type) join
into serialized `wandb.proto.wandb_internal_pb2.Record` messages.
"""

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
INTERNAL = ("_runtime", "_timestamp", "_wandb")


def find_runs(root: Path) -> list[Path]:
    """The offline-run-* folders anywhere under root, sorted."""
    return sorted(path for path in Path(root).rglob("offline-run-*") if path.is_dir())


def records(path: Path):
    """Yield the Records of a .wandb file; raise ValueError on a bad header, checksum or chunk order."""
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a W&B transaction log")
    position, pending = HEADER.size, None
    while position + CHUNK.size <= len(data):
        if BLOCK - position % BLOCK < CHUNK.size:  # block trailer too small for a chunk header
            position += BLOCK - position % BLOCK
            continue
        checksum, length, kind = CHUNK.unpack_from(data, position)
        if (checksum, length, kind) == (0, 0, 0):  # zero padding
            position += BLOCK - position % BLOCK
            continue
        payload = data[position + CHUNK.size : position + CHUNK.size + length]
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(f"{path}: truncated or corrupt chunk at byte {position}")
        position += CHUNK.size + length
        if kind in (FULL, FIRST) and pending is not None or kind in (MIDDLE, LAST) and pending is None:
            raise ValueError(f"{path}: chunk of type {kind} out of order at byte {position}")
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = None
            yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _public(values: dict) -> dict:
    return {key: value for key, value in values.items() if not key.startswith(INTERNAL)}


def read_run(run_folder: Path) -> dict:
    """id, config, history (one dict per step, with _step), summary, group, name, tags, job_type,
    exit_code and artifacts (name, type, aliases, metadata and files: path, size, digest and the
    local copy that `wandb sync` uploads) of a run.

    W&B-internal keys (_runtime, _timestamp, _wandb...) are left out of config, history and summary.
    """
    (log_file,) = Path(run_folder).glob("run-*.wandb")
    run = {
        "id": None,
        "config": {},
        "history": [],
        "summary": {},
        "group": None,
        "name": None,
        "tags": [],
        "job_type": None,
        "exit_code": None,
        "artifacts": [],
    }
    for record in records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group, name = record.run.run_group or None, record.run.display_name or None
            run.update(id=record.run.run_id, group=group, name=name, tags=list(record.run.tags))
            run["job_type"] = record.run.job_type or None
            run["config"].update(_items(record.run.config.update))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
            for item in record.config.remove:
                run["config"].pop(item.key or "/".join(item.nested_key), None)
        elif kind == "history":
            run["history"].append(_public(_items(record.history.item)))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
            for item in record.summary.remove:
                run["summary"].pop(item.key or "/".join(item.nested_key), None)
        elif kind == "artifact":
            found = record.artifact
            files = [
                {"path": f.path, "size": f.size, "digest": f.digest, "local_path": f.local_path}
                for f in found.manifest.contents
            ]
            run["artifacts"].append(
                {
                    "name": found.name,
                    "type": found.type,
                    "aliases": list(found.aliases),
                    "metadata": json.loads(found.metadata or "{}"),
                    "files": files,
                }
            )
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    run["config"], run["summary"] = _public(run["config"]), _public(run["summary"])
    return run
