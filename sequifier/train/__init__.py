"""`sequifier train`: metadata + windows -> a trained model, its checkpoints, metrics and exports.

`session.run` plans the run (`plan`) and lets the `trainer` fit the model on the `datasets` with
the `objective` (causal; `masking` for masked modelling), the optimizer (`optim`, `ademamix`) and
`schedules`, from fresh weights or those of another model (`transfer`: init_from, freeze);
`evaluation` validates, `metrics` and `tracking` record, `checkpoint` saves (with the
`progress`), `distributed` runs it under torchrun; `lifecycle` is a run as the workflow and the
search start it.

`run` is imported on first use, so that importing a module of this package stays light.
"""


def __getattr__(name: str):
    if name == "run":
        from sequifier.train import session

        return getattr(session, name)
    raise AttributeError(f"module 'sequifier.train' has no attribute {name!r}")
