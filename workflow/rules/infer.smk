# Inference as a DAG over runs and infer configs: infer {run} {name} applies the best model of run
# {run} (found through the run's train config) with the infer config `name` of config["infer"], to
# the test split unless that config names other data. With infer_runs: best (the default), {run}
# is `best`: the first finished run of the leaderboard, read when the job runs. The outputs
# (predictions/, probabilities/, embeddings/ as the config asks) land in
# results/{experiment}/infer/{run}/{name}/; for a run that failed (or no finished run at all) the
# folder stays empty and the log says so, as a failed run stops nothing else.


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
        'if [ -z "$run" ]; then mkdir -p {output:q}; echo "no finished run: nothing to infer" > {log:q}; exit 0; fi; '
        "python -m sequifier infer --config-path {input.config:q} {params.overrides} "
        '--set "train_config_path={params.runs}/$run/train.yaml" --output-path {output:q} > {log:q} 2>&1'
