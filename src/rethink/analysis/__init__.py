"""Metrics, figures, tables and the claims check; everything here reads results/metrics/*.

The reports the workflow can make, by name (figures.py and tables.py draw them; the plan asks
for those whose experiment the config has, Figure 3 always and Table 3 with kernel rows).
"""

FIGURES = ("fig1a", "fig1b", "fig1c", "fig2a", "fig2b", "fig3")
TABLES = ("table1", "table2", "table3", "table4")
