"""Fetch a dataset's raw files with torchvision's own downloader (which checks its md5s) into the
dataset's root, on the machine that runs Snakemake: with `datasets.<name>.download: true` the
workflow's rule `data_download` does this once per dataset, as a local rule, before any job
reads the files (compute nodes often have no network; no job downloads). By hand:

    python -m rethink.data.download --source cifar10 --root data/cifar10

`--out FILE` records what is there (source, root, the raw files each split is read from).
"""

import argparse
import json
import sys

from rethink.data import sources
from rethink.errors import cli_main
from rethink.fileio import write_text_atomic


def fetch(source, root):
    """Both splits into `root`, as torchvision lays them out; a file already there and intact is kept."""
    from rethink.torchvision_guard import torchvision

    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(torchvision.datasets, sources.TORCHVISION_CLASS[source])
    for train in (True, False):
        dataset_class(str(root), train=train, download=True)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.data.download", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=sorted(sources.TORCHVISION_CLASS))
    parser.add_argument("--root", required=True, help="the dataset's root (datasets.<name>.root)")
    parser.add_argument("--out", help="write a record of the raw files here (JSON)")
    args = parser.parse_args(argv)
    spec = {"name": args.source, "source": args.source, "root": args.root}
    fetch(args.source, sources.root_of(spec))
    files = {split: [str(path) for path in sources.source_files(spec, split)] for split in sources.SPLITS}
    if args.out:
        record = {"source": args.source, "root": args.root, "files": files}
        write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
    print(f"{args.source}: raw files in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
