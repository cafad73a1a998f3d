# Inference as a DAG over runs and infer configs: infer {run} {name} applies the run's best model
# (found through the run's train config) with the infer config `name` of config["infer"], to the
# test split unless that config names other data. Its outputs (predictions/, probabilities/,
# embeddings/ as the config asks) land in results/{experiment}/runs/{run}/infer/{name}/.


rule infer:
    input:
        config=lambda wildcards: INFER_FILES[wildcards.name],
        train_config=run_path("train.yaml"),
        models=run_path("models"),
        metadata=f"{RESULTS}/metadata.json",
        splits=split_files(),
    output:
        directory(run_path("infer/{name}")),
    log:
        f"{LOGS}/infer/{{run}}-{{name}}.log",
    params:
        overrides=infer_flags,
    threads: 2
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier infer --config-path {input.config} {params.overrides} "
        "--output-path {output} > {log} 2>&1"
