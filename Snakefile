# sequifier workflow: from a table of sequences to training windows, trained models and their outputs.
# `snakemake --cores N` runs it here; `--profile workflow/profiles/slurm` submits it to SLURM.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/infer.smk"


rule all:
    input:
        preprocess_outputs(),
        train_outputs(),
        rules.leaderboard.output,
        infer_outputs(),
    default_target: True
