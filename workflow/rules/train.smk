# Training as a DAG over runs: run_config {run} -> train {run}.
# The gpu resource (0 here and in the default profile; 1 in the slurm profile) picks the device
# and the launcher: python on the CPU or one GPU, torchrun with a process per GPU when gpu > 1.


localrules:
    run_config,


rule run_config:
    input:
        train=config["train"],
    output:
        config=run_path("train.yaml"),
    log:
        log=f"{LOGS}/run_config/{{run}}.log",
    params:
        resolved=resolved_run_config,
    run:
        write_run_config(wildcards.run, params.resolved, output.config, log.log)


# A train job is one `sequifier train-run` (sequifier/train/lifecycle.py): the training that
# train_command gives (python, or torchrun with a process per GPU when gpu > 1), its outcome kept.
# A job that is killed, times out or crashes leaves its checkpoints, and the next attempt resumes
# from the last one (continue_training). Only then: the stamp of the inputs (run config, metadata,
# the model of init_from, GPU count) lives in the checkpoints folder while a run is unfinished, and
# checkpoints without the same stamp are dropped, so a changed or finished run (or one whose
# init_from model changed) trains from scratch. The metrics CSV is copied into place last: the
# outputs are complete only when training and export are.
# Only bad settings or bad data (sequifier's exit 2, also under torchrun) make a run `failed`,
# and that does not stop the other runs: the job ends with status.json {"status": "failed"}, an
# empty models folder and an empty metrics.csv, and the leaderboard marks the run failed;
# `--forcerun train` (or deleting the status.json) tries it again. Anything else (a crash, out of
# memory, 74, 75: stopped at a checkpoint by a time limit, a signal) fails the job, so that
# Snakemake's retries (the slurm profile's `retries`) or the next start resume it.
rule train:
    input:
        config=run_path("train.yaml"),
        metadata=f"{RESULTS}/metadata.json",
        init_from=init_from_input,
        splits=split_files(),
    output:
        models=directory(run_path("models")),
        metrics=run_path("metrics.csv"),
        status=run_path("status.json"),
    log:
        f"{LOGS}/train/{{run}}.log",
    params:
        training=train_command,
        checkpoints=checkpoints_folder,
        metrics=package_metrics,
    threads: 4
    resources:
        gpu=0,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier train-run --run {wildcards.run:q} --inputs {input.config:q} {input.metadata:q} {input.init_from:q} "
        "--checkpoints {params.checkpoints:q} --metrics {params.metrics:q} --metrics-copy {output.metrics:q} "
        "--models {output.models:q} --status {output.status:q} --log {log:q} --gpus {resources.gpu} "
        "--threads {threads} -- {params.training}"
