# Preprocessing as a DAG over parts of the table (each part holds whole sequences):
# partition -> scan {part} -> metadata -> windows {part} -> merge {split}.


rule partition:
    input:
        data=input_files(),
        config=config["preprocess"],
    output:
        temp(directory(parts_folder())),
    log:
        f"{LOGS}/partition/partition.log",
    params:
        flags=PREPROCESS_FLAGS,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier preprocess-step partition --config-path {input.config} {params.flags} > {log} 2>&1"


rule scan:
    input:
        data=scan_input,
        config=config["preprocess"],
    output:
        summary=temp(part_path("scan_path")),
        sequences=temp(part_path("sequences_path")),
        rows=temp(part_path("sorted_path")),
    log:
        f"{LOGS}/scan/part-{{part}}.log",
    params:
        flags=PREPROCESS_FLAGS,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier preprocess-step scan --part {wildcards.part} --config-path {input.config} "
        "{params.flags} > {log} 2>&1"


rule metadata:
    input:
        data=input_files(),
        id_maps=id_map_files(),
        config=config["preprocess"],
        summaries=all_parts("scan_path"),
        sequences=all_parts("sequences_path"),
    output:
        f"{RESULTS}/metadata.json",
    log:
        f"{LOGS}/metadata/metadata.log",
    params:
        flags=PREPROCESS_FLAGS,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier preprocess-step reduce --config-path {input.config} {params.flags} > {log} 2>&1"


rule windows:
    input:
        metadata=f"{RESULTS}/metadata.json",
        config=config["preprocess"],
        rows=part_path("sorted_path"),
        sequences=part_path("sequences_path"),
    output:
        temp(directory(part_path("windows_path"))),
    log:
        f"{LOGS}/windows/part-{{part}}.log",
    params:
        flags=PREPROCESS_FLAGS,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier preprocess-step windows --part {wildcards.part} --config-path {input.config} "
        "{params.flags} > {log} 2>&1"


rule merge:
    input:
        metadata=f"{RESULTS}/metadata.json",
        config=config["preprocess"],
        windows=all_parts("windows_path"),
    output:
        split_output(),
    log:
        f"{LOGS}/merge/split{{split}}.log",
    wildcard_constraints:
        split=r"\d+",
    params:
        flags=PREPROCESS_FLAGS,
    conda:
        CONDA_ENV
    shell:
        "python -m sequifier preprocess-step merge --split {wildcards.split} --config-path {input.config} "
        "{params.flags} > {log} 2>&1"
