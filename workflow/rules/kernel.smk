# Section 5 and Appendix C: one kernel-interpolation job per Table 3 row (clean shards -> a
# featuriser -> exact or ridge solves), their metrics, and Theorem 1's construction verified.
# Table 3 itself is made by the `table` rule (analysis.smk) from results/metrics/kernel.csv.


wildcard_constraints:
    row="|".join(PLAN.kernel_rows) or "(?!)",


rule kernel_row:
    input:
        train=get_row_shards("train"),
        test=get_row_shards("test"),
    output:
        paths.KERNEL_ROW,
    log:
        paths.KERNEL_LOG,
    threads: get_row_setting("threads")
    resources:
        **kernel_resources(),
    params:
        row=get_row_json,
        code=PLAN.code["kernel"],
    shell:
        "python -m rethink.kernel solve --row {params.row:q} --train {input.train} --test {input.test}"
        " --out {output} > {log} 2>&1"


rule kernel_aggregate:
    input:
        expand(paths.KERNEL_ROW, row=PLAN.kernel_rows),
    output:
        paths.KERNEL_METRICS,
    log:
        "results/logs/kernel/aggregate.log",
    localrule: PLAN.local_analysis()
    resources:
        **CPU,
    params:
        code=PLAN.code["kernel"],
    shell:
        "python -m rethink.kernel aggregate --rows {input} --out {output} > {log} 2>&1"


rule kernel_theorem1:
    input:
        train=PLAN.theorem1_shards(),
    output:
        csv=report(
            paths.THEOREM1.format(ext="csv"),
            caption="../report/theorem1.rst",
            category="Theorem 1",
        ),
        md=paths.THEOREM1.format(ext="md"),
    log:
        "results/logs/kernel/theorem1.log",
    resources:
        **CPU,
    params:
        spec=fileio.canonical_json(PLAN.theorem1),
        code=PLAN.code["kernel"],
    shell:
        "python -m rethink.kernel theorem1 --spec {params.spec:q} --train {input.train}"
        " --out $(dirname {output.csv})/theorem1 > {log} 2>&1"
