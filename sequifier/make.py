"""`sequifier make NAME`: a project folder whose configs run as they are on example data."""

from importlib import resources
from pathlib import Path

import numpy as np

from sequifier.data.columns import POSITION, SEQUENCE
from sequifier.errors import SequifierError
from sequifier.files import atomic_path

TEMPLATES = ("preprocess.yaml", "train.yaml", "infer.yaml", "hyperparameter-search.yaml")
EXAMPLE_STATES = ("low", "medium", "high", "peak", "drop")


def example_table(n_sequences: int = 200, seed: int = 7):
    """Sequences of a Markov chain over item states with a state-dependent price.

    Lengths vary from 10 to 80 items so that short sequences (padded windows) occur.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_states = len(EXAMPLE_STATES)
    transitions = rng.dirichlet(np.full(n_states, 0.4), size=n_states)
    base_price = np.linspace(5.0, 25.0, n_states)
    frames = []
    for sequence in range(n_sequences):
        length = int(rng.integers(10, 81))
        states = np.empty(length, dtype=np.int64)
        states[0] = rng.integers(n_states)
        for t in range(1, length):
            states[t] = rng.choice(n_states, p=transitions[states[t - 1]])
        price = base_price[states] + rng.normal(0.0, 1.0, size=length)
        frames.append(
            pd.DataFrame(
                {
                    SEQUENCE: sequence,
                    POSITION: np.arange(length),
                    "itemId": np.asarray(EXAMPLE_STATES)[states],
                    "price": np.round(price, 2),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def make(name: str) -> Path:
    """Create the project `name`: configs/, data/ (with example.csv), outputs/, logs/."""
    project = Path(name)
    if project.exists():
        raise SequifierError(f"{project}: already exists; `sequifier make` only creates new projects")
    templates = resources.files("sequifier") / "templates"
    with atomic_path(project) as tmp:
        (tmp / "configs").mkdir(parents=True)
        for template in TEMPLATES:
            (tmp / "configs" / template).write_text((templates / template).read_text())
        for folder in ("data", "outputs", "logs"):
            (tmp / folder).mkdir()
        example_table().to_csv(tmp / "data" / "example.csv", index=False)
    return project
