"""The former home of the model export functions, kept for a release: use `sequifier.model.export`.

Every public name of `sequifier.model.export` (load_bundle, read_bundle, find_export, ...) is
importable from here, with a DeprecationWarning on import."""

import warnings

from sequifier.model.export import *  # noqa: F403
from sequifier.model.export import load_bundle, read_bundle  # noqa: F401  (the names the README used)

warnings.warn(
    "sequifier.export has moved to sequifier.model.export; this name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
