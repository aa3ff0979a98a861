"""python -m rethink.archive {build,verify,restore,zenodo}: archive a finished run, check a
bundle, bring one back into a clone, prepare (and optionally upload) a Zenodo deposition."""

import argparse
import os
import pathlib
import sys

from rethink.archive import build, bundle, restore, zenodo
from rethink.errors import cli_main


def _build(args):
    final, tarball, found = build.build(pathlib.Path.cwd(), args.configfile, args.allow_incomplete, args.directory)
    for line in found:
        print(f"warning: archived although not up to date: {line}", file=sys.stderr)
    print(f"{final}\n{tarball}")


def _verify(args):
    try:
        with bundle.opened(args.path) as bag:
            found = bundle.problems(bag)
            n = sum(1 for p in (bag / "data").rglob("*") if p.is_file()) if (bag / "data").is_dir() else 0
    except bundle.BadBundle as err:  # damaged past reading: where, in one line
        found = [str(err)]
    for line in found:
        print(line)
    if found:
        print(f"error: {args.path}: {len(found)} problem(s)", file=sys.stderr)
        return 1
    sidecar = pathlib.Path(args.path + ".sha256")
    also = f", and the tarball its {sidecar.name}" if sidecar.is_file() and not os.path.isdir(args.path) else ""
    print(f"ok: {args.path}: {n} files match their sha256 manifest{also}")
    return 0


def _restore(args):
    manifest, stale, differ = restore.restore(args.path, pathlib.Path.cwd(), args.cores, args.different_source)
    print(f"restored {len(manifest['files'])} files of {manifest['name']} (commit {manifest['commit']})")
    if stale:
        what = "the source differs, so Snakemake would rerun" if differ else "error: Snakemake still finds stale"
        print(f"{what}:\n  " + "\n  ".join(f"{k}: {v}" for k, v in sorted(stale.items())), file=sys.stderr)
        return 0 if differ else 1
    print("snakemake has nothing to do: the restored run is up to date")
    return 0


def _zenodo(args):
    out, deposition = zenodo.prepare(args.path)
    print(out)
    if args.upload:
        print(zenodo.upload(deposition, "sandbox" if args.sandbox else "zenodo"))


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.archive", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="bundle the finished run under results/archive/<name>{,.tar.gz}")
    p.add_argument("--configfile", nargs="+", help="the run's config file(s), as given to snakemake")
    p.add_argument("--allow-incomplete", action="store_true", help="archive a run that is not complete")
    p.add_argument("--directory", help="the run's directory (snakemake --directory), when not this clone")
    p.set_defaults(func=_build)
    p = sub.add_parser("verify", help="check a bundle (folder or .tar.gz) against its sha256 manifests")
    p.add_argument("path")
    p.set_defaults(func=_verify)
    p = sub.add_parser("restore", help="restore a bundle into this clone (run from its root)")
    p.add_argument("path")
    p.add_argument("--cores", default=str(os.cpu_count()), help="for rebuilding the shards")
    p.add_argument("--different-source", action="store_true", help="restore into a clone of another commit")
    p.set_defaults(func=_restore)
    p = sub.add_parser("zenodo", help="write <name>.zenodo.json (deposition metadata); --upload makes a draft")
    p.add_argument("path", help="the bundle folder (its .tar.gz beside it is what is uploaded)")
    p.add_argument("--upload", action="store_true", help="upload as a draft (needs ZENODO_TOKEN and network)")
    p.add_argument("--sandbox", action="store_true", help="use sandbox.zenodo.org")
    p.set_defaults(func=_zenodo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
