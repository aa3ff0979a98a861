# Raw dataset -> clean HDF5 shards -> randomized shards per (noise, seed). One job per shard,
# except a streamed dataset's clean shards: one job per range of stream.shards_per_job shards.


# A streamed dataset (ImageNet) is listed once per split, by one job, into an index that its
# shard jobs read: nothing lists 1.28M files at parse time, and no process reads them all.
rule data_index:
    output:
        paths.SPLIT_INDEX,
    log:
        paths.DATA_LOG.replace("{stage}", "clean").replace("{shard}", "index"),
    resources:
        **CPU,
    params:
        spec=get_shard_spec,
        code=PLAN.code["data"],
    shell:
        "python -m rethink.data.prepare index --spec {params.spec:q} --split {wildcards.split}"
        " --out {output} > {log} 2>&1"


# With datasets.<name>.download: true, the raw files are fetched once per dataset, before any job
# reads them, by Snakemake's own process (a local rule: compute nodes often have no network).
rule data_download:
    output:
        paths.DOWNLOADED,
    log:
        paths.DATA_LOG.replace("{stage}/{split}-{shard}", "download"),
    wildcard_constraints:
        dataset="|".join(PLAN.downloads()) or "(?!)",
    localrule: True
    params:
        source=lambda wildcards: PLAN.datasets[wildcards.dataset]["source"],
        root=lambda wildcards: str(sources.root_of(PLAN.datasets[wildcards.dataset])),
    shell:
        "python -m rethink.data.download --source {params.source} --root {params.root:q}"
        " --out {output} > {log} 2>&1"


rule data_clean:
    input:
        index=get_split_index,
        raw=get_downloaded,
    output:
        paths.CLEAN_SHARD,
    log:
        paths.DATA_LOG.replace("{stage}", "clean"),
    wildcard_constraints:
        dataset=PLAN.not_streamed(NAME),
    resources:
        **CPU,
    params:
        spec=get_shard_spec,
        code=PLAN.code["data"],
        index=lambda wildcards, input: f"--index {input.index}" if input.index else "",
    shell:
        "python -m rethink.data.prepare clean --spec {params.spec:q} --split {wildcards.split}"
        " --shard {wildcards.shard} {params.index} --out {output} > {log} 2>&1"


# A streamed dataset's clean shards: one process writes a range, reading the index once; finished
# shards wait in a staging folder until all are done (a failed job's outputs are deleted; its
# rerun reuses them). A rule per range, data_<dataset>_<split>_r<NNN>: a job's outputs are fixed
# per rule, and a range's shards are no one wildcard pattern (README, "The workflow").
for span in PLAN.shard_ranges:

    rule:
        name:
            span.rule
        input:
            index=paths.SPLIT_INDEX.format(dataset=span.dataset, split=span.split),
        output:
            PLAN.range_outputs(span),
        log:
            paths.DATA_LOG.format(
                dataset=span.dataset,
                stage="clean",
                split=span.split,
                shard=span.rule[-4:],
            ),
        resources:
            **CPU,
        params:
            spec=PLAN.shard_spec(span.dataset),
            code=PLAN.code["data"],
            staging=paths.CLEAN_STAGING.format(
                dataset=span.dataset, code=PLAN.code["data"]
            ),
            split=span.split,
            # `--shards FIRST-LAST`, as a parameter Snakemake does not record (a function of the
            # outputs): changing shards_per_job regroups the shards and reruns no job
            shards=lambda wildcards, output, span=span: f"{span.first}-{span.last}",
        shell:
            # no loop variable here: Snakemake evaluates a shell expression again when the job
            # runs, when `span` is the last range
            "python -m rethink.data.prepare clean --spec {params.spec:q} --split {params.split}"
            " --shards {params.shards} --index {input.index}"
            " --staging {params.staging} --out {output} > {log} 2>&1"


rule data_channel_stats:
    input:
        get_clean_train_shards,
    output:
        paths.CHANNEL_STATS,
    log:
        paths.DATA_LOG.replace("{stage}", "clean").replace(
            "{split}-{shard}", "train-stats"
        ),
    resources:
        **CPU,
    params:
        spec=get_shard_spec,
        code=PLAN.code["data"],
    shell:
        "python -m rethink.data.prepare stats --spec {params.spec:q} --shards {input}"
        " --out {output} > {log} 2>&1"


rule data_randomize:
    input:
        clean=get_clean_shard,
        stats=get_channel_stats,
    output:
        paths.NOISE_SHARD,
    log:
        paths.DATA_LOG.replace("{stage}", "{noise}/s{seed}"),
    wildcard_constraints:
        noise=randomize.WILDCARD_PATTERN,
    resources:
        **CPU,
    params:
        spec=get_randomize_spec,
        code=PLAN.code["data"],
        stats=lambda wildcards, input: f"--stats {input.stats}" if input.stats else "",
    shell:
        "python -m rethink.data.prepare randomize --spec {params.spec:q} --noise {wildcards.noise}"
        " --seed {wildcards.seed} --split {wildcards.split} --shard {wildcards.shard}"
        " --clean {input.clean} {params.stats} --out {output} > {log} 2>&1"


rule data_shards:
    input:
        PLAN.data_targets(),
