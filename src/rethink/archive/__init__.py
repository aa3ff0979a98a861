"""Archive a finished run: one verifiable, citable bundle of its results, and a restore that
Snakemake finds up to date.

The bundle is a BagIt bag (sha256 manifests) whose payload is an RO-Crate (Workflow Run Crate
profile)::

    <name>/bagit.txt, bag-info.txt, manifest-sha256.txt, tagmanifest-sha256.txt
    <name>/data/ro-crate-metadata.json   the run as a CreateAction of the workflow
    <name>/data/CITATION.cff             this bundle, citing the paper and the pipeline
    <name>/data/archive.json             commit, config files, every result file's sha256, size,
                                         mtime and (for shards) provenance; the run's status
    <name>/data/report.html              snakemake --report
    <name>/data/results/...              the results (shards only with archive.shards: true)
    <name>/data/source/...               git archive of the commit
    <name>/data/run-config/...           the config file(s) the run used, at their paths
    <name>/data/environment/...          pip freeze, versions, the devices the cells ran on
    <name>/data/snakemake/metadata.json  Snakemake's records of every output (rerun triggers)

`python -m rethink.archive {build,verify,restore,zenodo}`; see README "Archiving".
"""

ARCHIVE_DIR = "results/archive"
MANIFEST = "archive.json"
METADATA = "snakemake/metadata.json"
RESULTS = "results"
DATA = "results/data"
