# Training: one job per cell, all of them jobs of the one rule `train` (compute.pack 1, as in the
# paper configs); with compute.pack > 1 one job per pack of cells, a rule each,
# train_<dataset>_<arch>_p<NNN> (a rule's outputs are fixed per rule: a job of several cells
# cannot be one wildcard pattern). A retried job resumes from its cells' checkpoints, which live
# outside the declared outputs so that Snakemake's cleanup of a failed job cannot delete them; a
# rerun pack re-emits its finished cells instead of training them.
# `exec`: the trainer's parent is Snakemake itself, so it notices when Snakemake is killed.
# A cell on several GPUs (architectures.<name>.gpus > 1) is started by torchrun, one process per
# GPU, inside this one job; torchrun passes SIGTERM on to every process.
# Snakemake exports OMP_NUM_THREADS (and the BLAS equivalents) = threads to the shell: per
# process; a job of several processes asks Slurm for that many CPUs times theirs.
TRAIN = (
    "{params.launcher} -m rethink.train --pack {params.pack:q} --compile {params.compile}"
    " > /dev/null 2> {log}"
)


if not PLAN.packed:

    rule train:
        input:
            unpack(get_train_inputs),
        output:
            paths.CELL_JSON,
            paths.CELL_HISTORY,
            paths.CELL_SUMMARY,
        log:
            paths.TRAIN_LOG,
        benchmark:
            paths.TRAIN_BENCHMARK
        threads: PLAN.threads()
        resources:
            **train_resources(),
        params:
            launcher=per_job(PLAN.launcher),
            pack=get_pack_json,
            code=per_job(PLAN.train_code),
            compile=PLAN.compile_mode(),
        shell:
            TRAIN


# Everything pack-specific reaches the command through params: Snakemake evaluates a shell
# expression again when the job runs, by which time `pack` is the loop's last one.
for pack in PLAN.packs if PLAN.packed else []:

    rule:
        name:
            pack.rule
        input:
            train=PLAN.train_inputs(pack, "train"),
            test=PLAN.train_inputs(pack, "test"),
        output:
            PLAN.train_outputs(pack),
        log:
            paths.TRAIN_PACK_LOG.format(pack=pack.rule),
        benchmark:
            paths.TRAIN_PACK_BENCHMARK.format(pack=pack.rule)
        threads: PLAN.threads()
        resources:
            **pack_resources(pack),
        params:
            launcher=PLAN.launcher(pack),
            pack=PLAN.pack_json(pack),
            code=PLAN.train_code(pack),
            compile=PLAN.compile_mode(),
        shell:
            TRAIN
