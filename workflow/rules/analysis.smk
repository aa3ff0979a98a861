# Cells -> aggregated metrics -> figures, tables, claims; one target rule per experiment.
# Everything after the aggregation reads results/metrics/* only.


rule analysis_aggregate:
    input:
        PLAN.cell_summaries(),
    output:
        **paths.METRICS,
    log:
        "results/logs/analysis/aggregate.log",
    localrule: PLAN.local_analysis()
    resources:
        **CPU,
    params:
        code=PLAN.code["aggregate"],
    shell:
        "python -m rethink.analysis.aggregate --summaries {input} --out-dir $(dirname {output.summary_csv})"
        " > {log} 2>&1"


rule analysis_experiments:
    output:
        paths.EXPERIMENTS_JSON,
    log:
        "results/logs/analysis/experiments.log",
    localrule: True
    params:
        membership=PLAN.membership_json(),
    run:
        from rethink.fileio import write_text_atomic  # never a half-written file

        write_text_atomic(output[0], f"{params.membership}\n")


# Every figure of the config (results/figures/<name>.*): Figure 3 draws the model, the others
# read the metrics of their experiment's cells. The caption is workflow/report/figure.rst's
# section for the figure's name.
rule figure:
    input:
        unpack(get_report_inputs),
    output:
        pdf=paths.FIGURE.replace("{ext}", "pdf"),
        png=report(
            paths.FIGURE.replace("{ext}", "png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        json=paths.FIGURE.replace("{ext}", "json"),
    log:
        paths.REPORT_LOG,
    wildcard_constraints:
        name="|".join(PLAN.figures),
    localrule: PLAN.local_analysis()
    resources:
        **CPU,
    params:
        metrics=lambda wildcards, input: (
            f"--metrics {paths.METRICS_DIR}" if input else ""
        ),
        band=config["figures"]["band"],
        code=PLAN.code["figure"],
    shell:
        "python -m rethink.analysis.figures {wildcards.name} {params.metrics} --band {params.band}"
        " --out $(dirname {output.pdf})/{wildcards.name} > {log} 2>&1"


# Every table of the config (results/tables/<name>.*): Table 3 from the kernel rows' metrics
# (workflow/rules/kernel.smk), the others from their experiment's cells.
rule table:
    input:
        unpack(get_report_inputs),
    output:
        csv=report(
            paths.TABLE.replace("{ext}", "csv"),
            caption="../report/table.rst",
            category="Tables",
        ),
        md=paths.TABLE.replace("{ext}", "md"),
        tex=paths.TABLE.replace("{ext}", "tex"),
        json=paths.TABLE.replace("{ext}", "json"),
    log:
        paths.REPORT_LOG,
    wildcard_constraints:
        name="|".join(PLAN.tables) or "(?!)",
    localrule: PLAN.local_analysis()
    resources:
        **CPU,
    params:
        code=PLAN.code["table"],
    shell:
        "python -m rethink.analysis.tables {wildcards.name} --metrics $(dirname {input.experiments})"
        " --out $(dirname {output.csv})/{wildcards.name} > {log} 2>&1"


rule analysis_claims:
    input:
        **PLAN.report_inputs("claims"),
        kernel=[paths.KERNEL_METRICS] if PLAN.kernel_rows else [],
    output:
        md=report(
            paths.CLAIMS.format(ext="md"),
            caption="../report/claims.rst",
            category="Claims",
        ),
        json=paths.CLAIMS.format(ext="json"),
    log:
        "results/logs/analysis/claims.log",
    localrule: PLAN.local_analysis()
    resources:
        **CPU,
    params:
        thresholds=fileio.canonical_json(config["claims"]),
        kernel=f"--kernel {paths.KERNEL_METRICS}" if PLAN.kernel_rows else "",
        code=PLAN.code["claims"],
    shell:
        "python -m rethink.analysis.claims --metrics $(dirname {input.summary}) --thresholds {params.thresholds:q}"
        " {params.kernel} --out $(dirname {output.md})/claims > {log} 2>&1"


# `snakemake fig1c` trains just the cells Figure 1c needs. Figures and tables read the metrics
# aggregated over all cells, so they are made by a full run (or by asking for their file).
for experiment, cell_ids in PLAN.experiments.items():

    rule:
        name:
            experiment
        input:
            PLAN.cell_summaries(cell_ids),
        localrule: True
