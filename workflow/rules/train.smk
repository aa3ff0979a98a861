# One training job per pack of cells (compute.pack of one architecture; 1 = a job per cell),
# one rule per pack, named train_<dataset>_<arch>_p<NNN>. A retried job resumes from its cells'
# checkpoints, which live outside the declared outputs so that Snakemake's cleanup of a failed
# job cannot delete them; a rerun pack re-emits its finished cells instead of training them.
# `exec`: the trainer's parent is Snakemake itself, so it notices when Snakemake is killed.
# A cell on several GPUs (architectures.<name>.gpus > 1) is started by torchrun, one process per
# GPU, inside this one job; torchrun passes SIGTERM on to every process.


for pack in PACKS:

    rule:
        name:
            pack.rule
        input:
            train=pack_shards(pack, "train"),
            test=pack_shards(pack, "test"),
        output:
            pack_outputs(pack),
        log:
            paths.TRAIN_JOB_LOG.format(pack=pack.rule),
        conda:
            ENV
        # Snakemake exports OMP_NUM_THREADS (and the BLAS equivalents) = threads to the shell:
        # per process; a job of several processes asks Slurm for that many CPUs times theirs
        threads: config["compute"]["threads"]
        resources:
            runtime=pack_runtime(pack),
            mem_mb=pack_mem_mb(pack),
            cpus_per_task=pack_cpus(pack),
            gpu=pack_gpus(pack),
        # Everything pack-specific reaches the command through params: Snakemake evaluates a
        # shell expression again when the job runs, by which time `pack` is the loop's last one.
        params:
            launcher=pack_launcher(pack),
            pack=pack_json(pack),
            code=CODE["train"],
            compile=config["compute"]["compile"],
        shell:
            "{params.launcher} -m rethink.train --pack {params.pack:q} --compile {params.compile}"
            " > /dev/null 2> {log}"
