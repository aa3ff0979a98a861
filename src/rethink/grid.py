"""Experiments -> the units of work they need. The one place the grid is expanded.

For now the unit is a randomized dataset (dataset, noise, seed); the training cells that
consume them extend this expansion, never a copy of it.
"""

from rethink.data.randomize import label_corruption, parse_noise


def experiment_noises(experiment):
    """The experiment's noises, canonical and without duplicates, in config order."""
    noises = [parse_noise(name) for name in experiment["noises"]]
    noises += [label_corruption(level) for level in experiment["corruption_levels"]]
    return list(dict.fromkeys(noises))


def data_units(config):
    """Sorted (dataset, noise, seed) triples that any experiment needs, deduplicated."""
    units = {
        (experiment["dataset"], noise, seed)
        for experiment in config["experiments"].values()
        for noise in experiment_noises(experiment)
        for seed in experiment["seeds"]
    }
    return sorted(units, key=lambda u: (u[0], u[1].name, u[2]))
