# Cells -> aggregated metrics; one target rule per experiment (`snakemake fig1c`).


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


for experiment, cell_ids in EXPERIMENTS.items():

    rule:
        name:
            experiment
        input:
            cell_outputs(cell_ids),
        localrule: True
