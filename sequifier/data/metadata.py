"""The metadata file that preprocess writes and train and infer read.

It holds everything data-dependent that later stages need: columns and their types, id maps,
class counts, real-column statistics, the window length, the splits and their paths (relative
to the project root), row and window counts, the preprocess config and a hash of the input.
"""

from pathlib import Path

from sequifier.errors import DataError
from sequifier.files import read_json

FORMAT = "sequifier-metadata/2"
EARLIER_FORMATS = {
    "sequifier-metadata/1": "its windows do not say which items are context from earlier splits, and its "
    "id maps and statistics were fitted on every split",
}
SPLIT_NAMES = {1: ["train"], 2: ["train", "validation"], 3: ["train", "validation", "test"]}


def split_names(n_splits: int) -> list[str]:
    return SPLIT_NAMES.get(n_splits, [f"split{k}" for k in range(n_splits)])


def load_metadata(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found; run `sequifier preprocess` first")
    try:
        metadata = read_json(path)
    except ValueError as error:
        raise DataError(f"{path}: not a valid metadata file: {error}") from None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found in EARLIER_FORMATS:
        raise DataError(
            f"{path}: metadata of format {found}, written by an earlier version of sequifier "
            f"({EARLIER_FORMATS[found]}); run `sequifier preprocess` again"
        )
    if found != FORMAT:
        raise DataError(f"{path}: not a sequifier metadata file (expected format {FORMAT}, found {found!r})")
    return metadata


def input_name(data_path: Path) -> str:
    """The name in the outputs' file names: the input file's stem or the input folder's name."""
    return data_path.stem if data_path.is_file() else data_path.name


def metadata_path_of(config: dict) -> Path:
    """Where a preprocess config writes its metadata."""
    root = Path(config["project_root"])
    name = input_name(root / config["data_path"])
    return root / (config["metadata_config_path"] or f"configs/metadata_configs/{name}.json")


def id_map_to_json(id_map: dict) -> dict:
    return {str(k): v for k, v in id_map.items()}


def id_map_from_json(raw: dict, dtype: str) -> dict:
    return {(int(k) if dtype == "int64" else k): v for k, v in raw.items()}
