# Raw dataset -> clean HDF5 shards -> randomized shards per (noise, seed). One job per shard,
# except a streamed dataset's clean shards: one job per range of stream.shards_per_job shards.


# A streamed dataset (ImageNet) is listed once per split, by one job, into an index that its
# shard jobs read: nothing lists 1.28M files at parse time, and no process reads them all.
rule data_index:
    output:
        paths.SPLIT_INDEX,
    log:
        paths.DATA_LOG.replace("{stage}", "clean").replace("{shard}", "index"),
    conda:
        ENV
    params:
        spec=shard_spec,
        code=CODE["data"],
    shell:
        "python -m rethink.data.prepare index --spec {params.spec:q} --split {wildcards.split}"
        " --out {output} > {log} 2>&1"


rule data_clean:
    input:
        index=split_index,
    output:
        paths.CLEAN_SHARD,
    log:
        paths.DATA_LOG.replace("{stage}", "clean"),
    wildcard_constraints:
        dataset=NOT_STREAMED,
    conda:
        ENV
    params:
        spec=shard_spec,
        code=CODE["data"],
        index=lambda wildcards, input: f"--index {input.index}" if input.index else "",
    shell:
        "python -m rethink.data.prepare clean --spec {params.spec:q} --split {wildcards.split}"
        " --shard {wildcards.shard} {params.index} --out {output} > {log} 2>&1"


# One process writes the range, reading the index once; finished shards wait in a staging
# folder until all are done (a failed job's outputs are deleted; its rerun reuses them).
for span in shard_ranges():

    rule:
        name:
            span.rule
        input:
            index=paths.SPLIT_INDEX.format(dataset=span.dataset, split=span.split),
        output:
            range_outputs(span),
        log:
            paths.DATA_LOG.format(
                dataset=span.dataset,
                stage="clean",
                split=span.split,
                shard=span.rule[-4:],
            ),
        conda:
            ENV
        params:
            spec=shard_spec(span),
            code=CODE["data"],
            staging=paths.CLEAN_STAGING.format(dataset=span.dataset, code=CODE["data"]),
            split=span.split,
            shards=range_argument(span),
        shell:
            # no loop variable here: Snakemake evaluates a shell expression again when the job
            # runs, when `span` is the last range
            "python -m rethink.data.prepare clean --spec {params.spec:q} --split {params.split}"
            " --shards {params.shards} --index {input.index}"
            " --staging {params.staging} --out {output} > {log} 2>&1"


rule data_channel_stats:
    input:
        clean_train_shards,
    output:
        paths.CHANNEL_STATS,
    log:
        paths.DATA_LOG.replace("{stage}", "clean").replace(
            "{split}-{shard}", "train-stats"
        ),
    conda:
        ENV
    params:
        spec=shard_spec,
        code=CODE["data"],
    shell:
        "python -m rethink.data.prepare stats --spec {params.spec:q} --shards {input}"
        " --out {output} > {log} 2>&1"


rule data_randomize:
    input:
        clean=clean_shard,
        stats=gaussian_stats,
    output:
        paths.NOISE_SHARD,
    log:
        paths.DATA_LOG.replace("{stage}", "{noise}/s{seed}"),
    conda:
        ENV
    params:
        spec=randomize_spec,
        code=CODE["data"],
        stats=lambda wildcards, input: f"--stats {input.stats}" if input.stats else "",
    shell:
        "python -m rethink.data.prepare randomize --spec {params.spec:q} --noise {wildcards.noise}"
        " --seed {wildcards.seed} --split {wildcards.split} --shard {wildcards.shard}"
        " --clean {input.clean} {params.stats} --out {output} > {log} 2>&1"


rule data_shards:
    input:
        data_targets(),
