# Cells -> aggregated metrics -> figures, tables, claims; one target rule per experiment.
# Everything after the aggregation reads results/metrics/* only.


rule analysis_aggregate:
    input:
        cell_outputs(CELLS),
    output:
        **paths.METRICS,
    log:
        "results/logs/analysis/aggregate.log",
    conda:
        ENV
    params:
        code=CODE["analysis"],
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
        membership=membership_json(),
    run:
        from rethink.fileio import write_text_atomic  # never a half-written file

        write_text_atomic(output[0], f"{params.membership}\n")


for figure in FIGURES:

    rule:
        name:
            f"figure_{figure}"
        input:
            **metrics_inputs(figure),
        output:
            pdf=paths.FIGURE.format(name=figure, ext="pdf"),
            png=report(
                paths.FIGURE.format(name=figure, ext="png"),
                caption=f"../report/{figure}.rst",
                category="Figures",
            ),
            json=paths.FIGURE.format(name=figure, ext="json"),
        log:
            f"results/logs/analysis/{figure}.log",
        conda:
            ENV
        params:
            figure=figure,
            metrics=metrics_argument(figure),
            band=config["figures"]["band"],
            code=CODE["report"],
        shell:
            "python -m rethink.analysis.figures {params.figure} {params.metrics} --band {params.band}"
            " --out $(dirname {output.pdf})/{params.figure} > {log} 2>&1"


for table in TABLES:

    rule:
        name:
            f"table_{table}"
        input:
            **metrics_inputs(table),
        output:
            csv=report(
                paths.TABLE.format(name=table, ext="csv"),
                caption=f"../report/{table}.rst",
                category="Tables",
            ),
            md=paths.TABLE.format(name=table, ext="md"),
            tex=paths.TABLE.format(name=table, ext="tex"),
            json=paths.TABLE.format(name=table, ext="json"),
        log:
            f"results/logs/analysis/{table}.log",
        conda:
            ENV
        params:
            table=table,
            code=CODE["report"],
        shell:
            "python -m rethink.analysis.tables {params.table} --metrics $(dirname {input.summary})"
            " --out $(dirname {output.csv})/{params.table} > {log} 2>&1"


# Table 3 (kernel interpolation, section 5) from the kernel step's metrics (workflow/rules/kernel.smk).
rule table_table3:
    input:
        kernel=paths.KERNEL_METRICS,
        experiments=paths.EXPERIMENTS_JSON,
    output:
        csv=report(
            paths.TABLE.format(name="table3", ext="csv"),
            caption="../report/table3.rst",
            category="Tables",
        ),
        md=paths.TABLE.format(name="table3", ext="md"),
        tex=paths.TABLE.format(name="table3", ext="tex"),
        json=paths.TABLE.format(name="table3", ext="json"),
    log:
        "results/logs/analysis/table3.log",
    conda:
        ENV
    params:
        code=CODE["report"],
    shell:
        "python -m rethink.analysis.tables table3 --metrics $(dirname {input.kernel})"
        " --out $(dirname {output.csv})/table3 > {log} 2>&1"


rule analysis_claims:
    input:
        **metrics_inputs("claims"),
        kernel=[paths.KERNEL_METRICS] if KERNEL_ROWS else [],
    output:
        md=report(
            paths.CLAIMS.format(ext="md"),
            caption="../report/claims.rst",
            category="Claims",
        ),
        json=paths.CLAIMS.format(ext="json"),
    log:
        "results/logs/analysis/claims.log",
    conda:
        ENV
    params:
        thresholds=claims_json(),
        kernel=claims_kernel_argument(),
        code=CODE["report"],
    shell:
        "python -m rethink.analysis.claims --metrics $(dirname {input.summary}) --thresholds {params.thresholds:q}"
        " {params.kernel} --out $(dirname {output.md})/claims > {log} 2>&1"


# `snakemake fig1c` trains just the cells Figure 1c needs. Figures and tables read the metrics
# aggregated over all cells, so they are made by a full run (or by asking for their file).
for experiment, cell_ids in EXPERIMENTS.items():

    rule:
        name:
            experiment
        input:
            cell_outputs(cell_ids),
        localrule: True
