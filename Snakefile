# sequifier workflow: from a table of sequences to training windows and trained models.
# `snakemake --cores N` runs it here; `--profile workflow/profiles/slurm` submits it to SLURM.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"


rule all:
    input:
        preprocess_outputs(),
        train_outputs(),
    default_target: True
