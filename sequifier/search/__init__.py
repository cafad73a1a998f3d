"""`sequifier hyperparameter-search`: a search `space` made into training runs, trained by the
`runner` and ranked by the `leaderboard`.

`run` is imported on first use, so that importing a module of this package stays light.
"""


def __getattr__(name: str):
    if name == "run":
        from sequifier.search import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'sequifier.search' has no attribute {name!r}")
