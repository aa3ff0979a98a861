# One training job per cell. A retried job resumes from its checkpoint, which lives outside
# the declared outputs so that Snakemake's cleanup of a failed job cannot delete it.


rule train_cell:
    input:
        train=cell_shards("train"),
        test=cell_shards("test"),
    output:
        cell=paths.CELL_JSON,
        history=paths.CELL_HISTORY,
        summary=paths.CELL_SUMMARY,
    log:
        paths.TRAIN_JOB_LOG,
    wildcard_constraints:
        noise=randomize.CELL_WILDCARD_PATTERN,
    conda:
        ENV
    # Snakemake exports OMP_NUM_THREADS (and the BLAS equivalents) = threads to the shell
    threads: config["compute"]["threads"]
    resources:
        runtime=cell_runtime,
        mem_mb=cell_mem_mb,
        cpus_per_task=config["compute"]["threads"],
        gpu=cell_gpus,
    params:
        cell=cell_json,
        code=CODE["train"],
        checkpoint=cell_checkpoint,
    shell:
        "printf '%s\\n' {params.cell:q} > {output.cell}"
        " && python -m rethink.train --cell {output.cell}"
        " --train-shards {input.train} --test-shards {input.test} --out-dir $(dirname {output.summary})"
        " --checkpoint {params.checkpoint} > /dev/null 2> {log}"
