"""Config validation: defaults, and errors that name the key, the value and what is allowed."""

import copy

import pytest
import yaml
from conftest import REPO, SCHEMA

from rethink import config as rconfig
from rethink import grid
from rethink.config import ConfigError

MINIMAL = {
    "datasets": {"synth": {"source": "synthetic"}},
    "experiments": {"fig1a": {"dataset": "synth", "noises": ["random_labels"]}},
}


def validated(changes=None):
    config = copy.deepcopy(MINIMAL)
    for key, value in (changes or {}).items():
        node, *path, last = [config, *key.split(".")]
        for part in path:
            node = node[part]
        node[last] = value
    return rconfig.validate(config, SCHEMA)


def test_defaults_are_filled_in():
    config = validated()
    assert config["shards"] == {"size": 50000, "compression": "lzf", "chunk_samples": 256}
    assert config["datasets"]["synth"]["synthetic"]["shape"] == [3, 32, 32]
    assert config["datasets"]["synth"]["subset"] == {"train": None, "test": None, "how": "stratified", "seed": 0}
    assert config["experiments"]["fig1a"]["seeds"] == [0]
    assert config["datasets"]["synth"]["name"] == "synth"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("experiments.fig1a.corruption_levels", [0.2, 1.5],
         r"experiments\.fig1a\.corruption_levels\[1\]: 1\.5 is greater than the maximum of 1"),
        ("experiments.fig1a.noises", ["random_labels", "blurred"],
         r"experiments\.fig1a\.noises\[1\]: 'blurred' is not one of \['true_labels'"),
        ("datasets.synth.source", "imagenet21k",
         r"datasets\.synth\.source: 'imagenet21k' is not one of \['fashion_mnist', 'mnist', 'cifar10', 'synthetic'\]"),
        ("experiments.fig1a.dataset", "cifar",
         r"experiments\.fig1a\.dataset: 'cifar' is not a configured dataset \(configured: synth\)"),
        ("experiments.fig1a.learning_rate", 0.1,
         r"experiments\.fig1a: Additional properties are not allowed \('learning_rate' was unexpected\)"),
        ("shards", {"size": 0}, r"shards\.size: 0 is less than the minimum of 1"),
        ("experiments.fig1a.seeds", [], r"experiments\.fig1a\.seeds: \[\] should be non-empty"),
    ],
)
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validated({key: value})


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate_and_expand(name):
    config = rconfig.load(REPO / "config" / name, SCHEMA)
    units = grid.data_units(config)
    names = {noise.name for _, noise, _ in units}
    assert {"true_labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian"} <= names
    assert "corrupt_p0.2" in names


def test_grid_deduplicates_shared_units_and_canonicalizes_levels():
    config = validated({"experiments": {
        "a": {"dataset": "synth", "noises": ["true_labels", "random_labels"], "seeds": [0, 1]},
        "b": {"dataset": "synth", "corruption_levels": [0.0, 0.5, 1.0], "seeds": [1]},
    }})
    units = [(d, n.name, s) for d, n, s in grid.data_units(config)]
    assert units == [
        ("synth", "corrupt_p0.5", 1),
        ("synth", "random_labels", 0), ("synth", "random_labels", 1),
        ("synth", "true_labels", 0), ("synth", "true_labels", 1),
    ]


def test_every_schema_key_is_documented():
    readme = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load(SCHEMA.read_text())

    def keys(node, prefix=""):
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            yield from keys(sub, prefix + name + ".")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from keys(extra, prefix + "<name>.")

    missing = [key for key in keys(schema) if f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"
