# Zhang et al. (ICLR 2017), "Understanding deep learning requires rethinking generalization".
# Thin on purpose: what runs is decided by src/rethink/plan.py; workflow/rules/ asks it.
from snakemake.utils import min_version

min_version("9.27")


# The config is config/config.yaml with each --configfile layered onto it (common.smk).
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/kernel.smk"


# Every cell is a target of its own (not only an input of the aggregation): a deleted cell is
# then rebuilt even while the aggregated metrics are still present.
rule all:
    default_target: True
    input:
        PLAN.cell_summaries(),
        rules.analysis_aggregate.output,
        PLAN.report_outputs(),
