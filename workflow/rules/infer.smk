# Inference as a DAG over runs and infer configs: infer {run} {name} applies the best model of run
# {run} (found through the run's train config) with the infer config `name` of config["infer"], to
# the test split unless that config names other data. With infer_runs: best (the default), {run}
# is `best`: the first finished run of the leaderboard, read when the job runs. The outputs
# (predictions/, probabilities/, embeddings/ as the config asks) land in
# results/{experiment}/infer/{run}/{name}/.


rule infer:
    input:
        unpack(infer_inputs),
        config=lambda wildcards: INFER_FILES[wildcards.name],
        metadata=f"{RESULTS}/metadata.json",
        splits=split_files(),
    output:
        directory(f"{RESULTS}/infer/{{run}}/{{name}}"),
    log:
        f"{LOGS}/infer/{{run}}-{{name}}.log",
    params:
        overrides=infer_flags,
        select=infer_select,
        runs=f"{RESULTS}/runs",
    threads: 2
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "run=$({params.select}); "
        'if [ -z "$run" ]; then echo "no finished run in the leaderboard" > {log}; exit 1; fi; '
        "python -m sequifier infer --config-path {input.config} {params.overrides} "
        "--set train_config_path={params.runs}/$run/train.yaml --output-path {output} > {log} 2>&1"
