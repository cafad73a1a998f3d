# sequifier workflow: from a table of sequences to training windows (and, later, models).
# `snakemake --cores N` runs it here; `--profile workflow/profiles/slurm` submits it to SLURM.

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"


rule all:
    input:
        preprocess_outputs(),
    default_target: True
