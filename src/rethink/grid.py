"""Experiments -> cells: the one place the grid is expanded, cells are named and their
hyper-parameters resolved.

A cell is (dataset, architecture, regularizer, noise, seed). Its hyper-parameters resolve in
this order, later entries winning:

    training  <  architectures.<arch>.hparams  <  regularizers.<reg>
              <  experiments.<exp>.overrides  <  experiments.<exp>.grid[i].overrides

Every experiment lists sub-grids (architectures x regularizers x noises x seeds; a sub-grid's
`seeds` default to the experiment's); the union over all enabled experiments, deduplicated by
cell id, is what trains. Two experiments that resolve
the same cell id to different hyper-parameters are a config error: a cell has one meaning.

    python -m rethink.grid [--configfile config/paper.yaml]   # cell count, experiment table
"""

import argparse
import dataclasses
import pathlib
import sys

from rethink import paths
from rethink.data import sources
from rethink.data.randomize import Noise, label_corruption, parse_noise
from rethink.errors import ConfigError, RethinkError, cli_main


@dataclasses.dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    regularizer: str
    noise: Noise
    seed: int

    @property
    def id(self):
        """Human-readable and path-safe: <dataset>/<arch>/<regularizer>/<noise>/s<seed>."""
        return paths.CELL_ID.format(**self.wildcards)

    @property
    def wildcards(self):
        return dict(
            dataset=self.dataset, arch=self.arch, regularizer=self.regularizer, noise=self.noise.name, seed=self.seed
        )


def entry_noises(entry, where="grid entry"):
    """A grid entry's noises, canonical, deduplicated, in config order (default: true labels)."""
    noises = [parse_noise(name) for name in entry["noises"]]
    for j, level in enumerate(entry["corruption_levels"]):
        try:
            noises.append(label_corruption(level))
        except RethinkError as err:
            raise ConfigError(f"config key {where}.corruption_levels[{j}]: {err}") from None
    return list(dict.fromkeys(noises)) or [parse_noise("true_labels")]


def _known(config, section, name, where):
    if name not in config[section]:
        raise ConfigError(
            f"config key {where}: {name!r} is not a configured {section[:-1]} "
            f"(configured: {', '.join(sorted(config[section]))})"
        )


def _check_fits(config, exp, hparams, where):
    """What the trainer checks against the data, checked here already: the crop fits the images."""
    _, height, width = sources.shape(config["datasets"][exp["dataset"]])
    if hparams["crop_size"] > min(height, width):
        raise ConfigError(
            f"config key {where}: hparams.crop_size {hparams['crop_size']} is larger than the {height}x{width} "
            f"images of dataset {exp['dataset']!r}; set crop_size to at most {min(height, width)}"
        )


def _check_streamable(config, exp, noise, where):
    """A streamed dataset's shards hold JPEG bytes: label noises only (the paper's ImageNet runs)."""
    if noise.changes_images and sources.streamed(config["datasets"][exp["dataset"]]):
        raise ConfigError(
            f"config key {where}: noise {noise.name} rewrites pixels, but dataset {exp['dataset']!r} is "
            "streamed as JPEG bytes; use true_labels, random_labels or corruption_levels"
        )


def spec(config, cell, hparams):
    """The cell JSON the trainer reads (its canonical form decides reruns). `test_labels` says
    what its test labels are: corrupted only for a label noise under randomization.test_labels:
    corrupted, so switching that option reruns exactly the label-noise cells."""
    arch = config["architectures"][cell.arch]
    test_labels = config["randomization"]["test_labels"] if cell.noise.changes_labels else "clean"
    result = {
        "cell": cell.id, "dataset": cell.dataset, "arch": arch.get("model", cell.arch),
        "arch_name": cell.arch, "width": arch["width"], "regularizer": cell.regularizer,
        "noise": cell.noise.name, "level": cell.noise.level, "seed": cell.seed,
        "test_labels": test_labels, "hparams": hparams,
    }  # fmt: skip
    dataset = config["datasets"][cell.dataset]
    if sources.streamed(dataset):  # how the trainer mixes shards shapes its sample order
        result["stream"] = {"window_shards": dataset["stream"]["window_shards"]}
    return result


def expand(config):
    """-> (cells: {id: (Cell, spec)} sorted by id, experiments: {name: [cell ids]})."""
    cells, owners, experiments = {}, {}, {}
    for exp_name, exp in config["experiments"].items():
        if not exp["enabled"]:
            continue
        ids = []
        for i, entry in enumerate(exp["grid"]):
            where = f"experiments.{exp_name}.grid[{i}]"
            for j, arch in enumerate(entry["architectures"]):
                _known(config, "architectures", arch, f"{where}.architectures[{j}]")
            for j, reg in enumerate(entry["regularizers"]):
                _known(config, "regularizers", reg, f"{where}.regularizers[{j}]")
            for arch in entry["architectures"]:
                for reg in entry["regularizers"]:
                    hparams = {
                        **config["training"], **config["architectures"][arch]["hparams"],
                        **config["regularizers"][reg], **exp["overrides"], **entry["overrides"],
                    }  # fmt: skip
                    _check_fits(config, exp, hparams, f"{where} ({arch}, {reg})")
                    for noise in entry_noises(entry, where):
                        _check_streamable(config, exp, noise, where)
                        for seed in entry.get("seeds") or exp["seeds"]:
                            cell = Cell(exp["dataset"], arch, reg, noise, seed)
                            _add(cells, owners, cell, spec(config, cell, hparams), where)
                            ids.append(cell.id)
        experiments[exp_name] = list(dict.fromkeys(ids))
    return dict(sorted(cells.items())), experiments


def _add(cells, owners, cell, cell_spec, where):
    if cell.id in cells and cells[cell.id][1] != cell_spec:
        old = cells[cell.id][1]["hparams"]
        diff = sorted(k for k in old if old[k] != cell_spec["hparams"].get(k))
        raise ConfigError(
            f"config key {where}: cell {cell.id} is also made by {owners[cell.id]} with other "
            f"hyper-parameters ({', '.join(diff)} differ); give one of them its own regularizer name"
        )
    cells.setdefault(cell.id, (cell, cell_spec))
    owners.setdefault(cell.id, where)


@dataclasses.dataclass(frozen=True)
class Pack:
    """Cells trained together by one job (compute.pack at a time); a pack of one is one cell."""

    rule: str  # the Snakemake rule that trains it: train_<dataset>_<arch>_p<NNN>
    ids: tuple  # its cells' ids


def packs(config, cells):
    """Cells -> packs of up to compute.pack cells of one dataset, architecture and device, in
    cell-id order (so pack-mates are neighbours: same regularizer, other noises and seeds)."""
    size, groups, counts = config["compute"]["pack"], {}, {}
    for cell_id, (cell, cell_spec) in cells.items():
        groups.setdefault((cell.dataset, cell.arch, cell_spec["hparams"]["device"]), []).append(cell_id)
    result = []
    for (dataset, arch, _), ids in groups.items():
        for start in range(0, len(ids), size):
            n = counts[dataset, arch] = counts.get((dataset, arch), -1) + 1
            result.append(Pack(f"train_{dataset}_{arch}_p{n:03d}", tuple(ids[start : start + size])))
    return result


def data_units(config, cells=None):
    """Sorted (dataset, noise, seed) triples the cells read, deduplicated. `cells`: the first
    result of expand(config), when the caller already has it (saves a second expansion)."""
    cells = cells if cells is not None else expand(config)[0]
    units = {(cell.dataset, cell.noise, cell.seed) for cell, _ in cells.values()}
    return sorted(units, key=lambda u: (u[0], u[1].name, u[2]))


# ----------------------------------------------------------------------------- CLI


@cli_main
def main(argv=None):
    from rethink import config as rconfig

    parser = argparse.ArgumentParser(prog="python -m rethink.grid", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    args = parser.parse_args(argv)
    config = rconfig.load(pathlib.Path(args.configfile), pathlib.Path(args.schema))
    cells, experiments = expand(config)
    print(f"{args.configfile}: {len(cells)} cells, {sum(map(len, experiments.values()))} experiment entries")
    print()
    print("| experiment | cells | architectures | regularizers | noises | seeds |")
    print("|---|---:|---|---|---|---|")
    for name, ids in experiments.items():
        members = [cells[i][0] for i in ids]
        cols = [sorted({getattr(c, f) for c in members}) for f in ("arch", "regularizer")]
        noises = list(dict.fromkeys(c.noise.name for c in members))
        seeds = sorted({c.seed for c in members})
        print(
            f"| {name} | {len(ids)} | {', '.join(cols[0])} | {', '.join(cols[1])} | "
            f"{', '.join(noises)} | {', '.join(map(str, seeds))} |"
        )
    disabled = [n for n, e in config["experiments"].items() if not e["enabled"]]
    if disabled:
        print(f"\ndisabled: {', '.join(disabled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
