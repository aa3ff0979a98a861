"""Config validation (the schema, rethink.config; the rest, rethink.plan): defaults, and errors that
name the key, the value and what is allowed."""

import copy

import pytest
import yaml

from rethink import config as rconfig
from rethink import plan
from rethink.config import ConfigError
from rethink.data.randomize import parse_noise

from conftest import REPO, SCHEMA

MINIMAL = {
    "datasets": {"synth": {"source": "synthetic"}},
    "architectures": {"mlp_1x512": {}, "small": {"model": "inception", "width": 0.25, "hparams": {"lr": 0.1}}},
    "regularizers": {"none": {}, "wd": {"weight_decay": 0.0005}},
    "experiments": {
        "fig1a": {"dataset": "synth", "grid": [{"architectures": ["mlp_1x512"], "noises": ["random_labels"]}]}
    },
}


def planned(changes=None):
    config = copy.deepcopy(MINIMAL)
    for key, value in (changes or {}).items():
        node, *path, last = [config, *key.split(".")]
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return plan.Plan(rconfig.validate(config, SCHEMA))


def validated(changes=None):
    return planned(changes).config


def test_defaults_are_filled_in():
    config = validated()
    assert config["shards"] == {"size": 50000, "compression": "lzf", "chunk_samples": 256}
    assert config["datasets"]["synth"]["synthetic"]["shape"] == [3, 32, 32]
    assert config["datasets"]["synth"]["subset"] == {"train": None, "test": None, "how": "stratified", "seed": 0}
    assert config["experiments"]["fig1a"]["seeds"] == [0]
    assert config["experiments"]["fig1a"]["grid"][0]["regularizers"] == ["none"]
    assert config["datasets"]["synth"]["name"] == "synth"
    assert config["training"]["batch_size"] == 128 and config["training"]["lr_decay"] == 0.95
    assert config["training"]["init"] == "tensorflow"
    assert config["randomization"] == {"permute": "positions", "gaussian_stats": "per_channel", "test_labels": "clean"}
    assert config["architectures"]["mlp_1x512"] == {
        "width": 1.0,
        "hparams": {},
        "runtime_minutes": 60,
        "mem_mb": 4000,
        "gpus": 1,
        "model": "mlp_1x512",
    }


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "experiments.fig1a.grid.0.corruption_levels",
            [0.2, 1.5],
            r"experiments\.fig1a\.grid\[0\]\.corruption_levels\[1\]: 1\.5 is greater than the maximum of 1",
        ),
        (
            "experiments.fig1a.grid.0.noises",
            ["random_labels", "blurred"],
            r"experiments\.fig1a\.grid\[0\]\.noises\[1\]: 'blurred' is not a noise; allowed: true_labels, "
            r"random_labels, shuffled_pixels, random_pixels, gaussian",
        ),
        (
            "experiments.fig1a.grid.0.architectures",
            ["mlp_1x512", "vgg"],
            r"experiments\.fig1a\.grid\[0\]\.architectures\[1\]: 'vgg' is not a configured architecture "
            r"\(configured: mlp_1x512, small\)",
        ),
        (
            "experiments.fig1a.grid.0.regularizers",
            ["dropout"],
            r"experiments\.fig1a\.grid\[0\]\.regularizers\[0\]: 'dropout' is not a configured regularizer",
        ),
        ("regularizers.wd", {"weight_decay": -1}, r"regularizers\.wd\.weight_decay: -1 is less than the minimum of 0"),
        (
            "regularizers.wd",
            {"wieght_decay": 0.1},
            r"regularizers\.wd: Additional properties are not allowed \('wieght_decay' was unexpected\)",
        ),
        ("training", {"device": "tpu"}, r"training\.device: 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"),
        ("training", {"init": "glorot"}, r"training\.init: 'glorot' is not one of \['tensorflow', 'pytorch'\]"),
        (
            "randomization",
            {"test_labels": "noisy"},
            r"randomization\.test_labels: 'noisy' is not one of \['clean', 'corrupted'\]",
        ),
        (
            "architectures.small.model",
            "resnet",
            r"architectures\.small\.model: 'resnet' is not a user's model as \"package\.module:function\" .* or a "
            r"model of the registry \(inception, inception_nobn, alexnet, mlp_1x512, mlp_3x512, inception_v3\)",
        ),
        ("architectures.vgg", {}, r"architectures\.vgg: 'vgg' is not a model name, so set architectures\.vgg\.model"),
        (
            "datasets.synth.source",
            "imagenet21k",
            r"datasets\.synth\.source: 'imagenet21k' is not one of "
            r"\['fashion_mnist', 'mnist', 'cifar10', 'synthetic', 'imagenet'\]",
        ),
        (
            "experiments.fig1a.dataset",
            "cifar",
            r"experiments\.fig1a\.dataset: 'cifar' is not a configured dataset \(configured: synth\)",
        ),
        (
            "experiments.fig1a.learning_rate",
            0.1,
            r"experiments\.fig1a: Additional properties are not allowed \('learning_rate' was unexpected\)",
        ),
        ("experiments.fig1a.grid", [], r"experiments\.fig1a\.grid: \[\] should be non-empty"),
        ("shards", {"size": 0}, r"shards\.size: 0 is less than the minimum of 1"),
        ("experiments.fig1a.seeds", [], r"experiments\.fig1a\.seeds: \[\] should be non-empty"),
        ("archive", {"name": "my archive"}, r"archive\.name: 'my archive' does not match"),
        ("archive", {"authors": [{"given-names": "A"}]}, r"archive\.authors\[0\]: 'family-names' is a dependency"),
        ("archive", {"shards": "yes"}, r"archive\.shards: 'yes' is not of type 'boolean'"),
    ],
)
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validated({key: value})


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate_and_expand(name):
    shipped = plan.load(REPO / "config" / name, SCHEMA)
    names = {noise.name for _, noise, _ in shipped.data_units}
    assert {"true_labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian"} <= names
    assert "corrupt_p0.2" in names
    experiments = shipped.experiments
    assert {"fig1a", "fig1b", "fig1c", "fig2b", "table1", "table4"} <= set(experiments)
    assert experiments["fig1b"] == experiments["fig1c"]  # one set of cells serves both figures
    assert len(experiments["table1"]) == 4 * 2 + 2 * 3 + 5  # crop x wd for two, wd for three, random labels


def test_paper_config_is_the_papers_setup():
    paper = plan.load(REPO / "config" / "paper.yaml", SCHEMA)
    cells, experiments = paper.cells, paper.experiments
    specs = {cell_id: spec for cell_id, (_, spec) in cells.items()}
    assert len(specs) == 55
    inception = specs["cifar10/inception/none/random_labels/s0"]
    assert inception["width"] == 1.0 and inception["hparams"]["lr"] == 0.1
    assert inception["hparams"]["lr_decay"] == 0.95 and inception["hparams"]["batch_size"] == 128
    assert specs["cifar10/alexnet/none/true_labels/s0"]["hparams"]["lr"] == 0.01
    assert {spec["hparams"]["init"] for spec in specs.values()} == {"tensorflow"}
    assert {spec["test_labels"] for spec in specs.values()} == {"clean"}
    assert specs["cifar10/inception/aug/random_labels/s0"]["hparams"]["lr_decay"] == 0.999
    assert len(experiments["fig1b"]) == 33 and "fig2a" not in experiments  # ImageNet: disabled


def test_grid_deduplicates_shared_units_and_canonicalizes_levels():
    grid = planned(
        {
            "experiments": {
                "a": {
                    "dataset": "synth",
                    "seeds": [0, 1],
                    "grid": [{"architectures": ["mlp_1x512"], "noises": ["true_labels", "random_labels"]}],
                },
                "b": {
                    "dataset": "synth",
                    "seeds": [1],
                    "grid": [{"architectures": ["mlp_1x512"], "corruption_levels": [0.0, 0.5, 1.0]}],
                },
            }
        }
    )
    units = [(d, n.name, s) for d, n, s in grid.data_units]
    assert units == [
        ("synth", "corrupt_p0.5", 1),
        ("synth", "random_labels", 0),
        ("synth", "random_labels", 1),
        ("synth", "true_labels", 0),
        ("synth", "true_labels", 1),
    ]
    cells, experiments = grid.cells, grid.experiments
    assert len(cells) == 5 and experiments["b"] == [
        "synth/mlp_1x512/none/true_labels/s1",
        "synth/mlp_1x512/none/corrupt_p0.5/s1",
        "synth/mlp_1x512/none/random_labels/s1",
    ]


def test_hyperparameters_resolve_in_the_documented_order():
    grid = planned(
        {
            "training": {"lr": 0.5, "batch_size": 64, "max_epochs": 7, "dropout": 0.1},
            "architectures": {"small": {"model": "inception", "width": 0.25, "hparams": {"lr": 0.2, "max_epochs": 8}}},
            "regularizers": {"none": {}, "wd": {"weight_decay": 0.001, "max_epochs": 9}},
            "experiments": {
                "e": {
                    "dataset": "synth",
                    "overrides": {"batch_size": 32},
                    "grid": [{"architectures": ["small"], "regularizers": ["wd"], "overrides": {"dropout": 0.3}}],
                }
            },
        }
    )
    ((cell, spec),) = grid.cells.values()
    hp = spec["hparams"]
    assert (hp["lr"], hp["max_epochs"], hp["weight_decay"], hp["batch_size"], hp["dropout"]) == (0.2, 9, 0.001, 32, 0.3)
    assert hp["momentum"] == 0.9 and hp["lr_decay"] == 0.95  # untouched defaults
    assert spec["arch"] == "inception" and spec["arch_name"] == "small" and spec["width"] == 0.25
    assert cell.id == "synth/small/wd/true_labels/s0" and spec["cell"] == cell.id


@pytest.mark.parametrize("test_labels", ["clean", "corrupted"])
def test_a_cell_records_whether_its_test_labels_are_corrupted(test_labels):
    entry = {
        "architectures": ["mlp_1x512"],
        "noises": ["true_labels", "random_labels", "shuffled_pixels"],
        "corruption_levels": [0.5],
    }
    grid = planned(
        {"randomization": {"test_labels": test_labels}, "experiments": {"e": {"dataset": "synth", "grid": [entry]}}}
    )
    recorded = {cell.noise.name: spec["test_labels"] for cell, spec in grid.cells.values()}
    assert recorded == {
        "true_labels": "clean",
        "shuffled_pixels": "clean",
        "random_labels": test_labels,
        "corrupt_p0.5": test_labels,
    }


def test_one_cell_with_two_meanings_is_an_error():
    config = copy.deepcopy(MINIMAL)
    config["experiments"]["other"] = {
        "dataset": "synth",
        "grid": [{"architectures": ["mlp_1x512"], "noises": ["random_labels"], "overrides": {"lr_decay": 0.999}}],
    }
    with pytest.raises(
        ConfigError,
        match=r"experiments\.other\.grid\[0\]: cell synth/mlp_1x512/none/random_labels/s0 "
        r"is also made by experiments\.fig1a\.grid\[0\] with other hyper-parameters "
        r"\(lr_decay differ\)",
    ):
        plan.Plan(rconfig.validate(config, SCHEMA))


def test_model_enum_matches_the_registry():
    from rethink.models import ARCHITECTURES

    assert rconfig.MODELS == ARCHITECTURES


def test_init_enum_matches_the_registry():
    from rethink.models import INITS

    schema = rconfig.load_schema(SCHEMA)
    assert tuple(schema["$defs"]["hparams"]["properties"]["init"]["enum"]) == tuple(INITS)


def test_every_hyperparameter_has_a_default():
    schema = rconfig.load_schema(SCHEMA)
    assert set(schema["$defs"]["hparams"]["properties"]) == set(schema["properties"]["training"]["properties"])


def test_every_schema_key_is_documented():
    readme = (REPO / "config" / "README.md").read_text()
    schema = rconfig.load_schema(SCHEMA)

    def keys(node, prefix=""):
        if "$ref" in node:  # hyper-parameter sets: documented once, under training.*
            return
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            yield from keys(sub, prefix + name + ".")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from keys(extra, prefix + "<name>.")
        if isinstance(node.get("items"), dict):
            yield from keys(node["items"], prefix[:-1] + "[i].")

    wanted = list(keys(schema)) + [f"training.{k}" for k in schema["$defs"]["hparams"]["properties"]]
    missing = [key for key in wanted if f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"


# ----------------------------------------------------------------------------- what the trainer would reject


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("training", {"batch_size": 32.0}, r"training\.batch_size: 32\.0 is not an integer \(write 32\)"),
        ("experiments.fig1a.seeds", [0, 1.0], r"experiments\.fig1a\.seeds\[1\]: 1\.0 is not an integer \(write 1\)"),
        ("datasets.synth.subset", {"train": 100.0}, r"datasets\.synth\.subset\.train: 100\.0 is not an integer"),
        (
            "experiments.fig1a.grid.0.seeds",
            [2**63],
            r"experiments\.fig1a\.grid\[0\]\.seeds\[0\]: 9223372036854775808 is "
            r"greater than the maximum",
        ),
        ("training", {"lr": float("inf")}, r"training\.lr: inf is not a finite number"),
        (
            "regularizers.wd",
            {"weight_decay": float("nan")},
            r"regularizers\.wd\.weight_decay: nan is not a finite number",
        ),
        ("architectures.small.width", float("inf"), r"architectures\.small\.width: inf is not a finite number"),
        (
            "experiments.fig1a.seeds",
            [2**63],
            r"experiments\.fig1a\.seeds\[0\]: 9223372036854775808 is greater than "
            r"the maximum of 9223372036854775807",
        ),
        (
            "training",
            {"crop_size": 33},
            r"experiments\.fig1a\.grid\[0\] \(mlp_1x512, none\): hparams\.crop_size 33 is larger than the 32x32 "
            r"images of dataset 'synth'; set crop_size to at most 32",
        ),
    ],
)
def test_what_the_trainer_would_reject_is_rejected_here(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validated({key: value})


def test_the_largest_seed_and_a_fitting_crop_pass():
    ((cell, spec),) = planned({"experiments.fig1a.seeds": [2**63 - 1], "training": {"crop_size": 32}}).cells.values()
    assert cell.seed == 2**63 - 1 and spec["hparams"]["crop_size"] == 32


# ----------------------------------------------------------------------------- config traps


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML, and so Snakemake) reads `1e-3` as a string; the config means 0.001."""
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(MINIMAL).replace("weight_decay: 0.0005", "weight_decay: 5e-4")
        + "training: {lr: 1e-3, momentum: 9E-1}\n"
    )
    assert yaml.safe_load(path.read_text())["training"] == {"lr": "1e-3", "momentum": "9E-1"}
    config = rconfig.load(path, SCHEMA)
    assert config["training"]["lr"] == 0.001 and config["training"]["momentum"] == 0.9
    assert config["regularizers"]["wd"] == {"weight_decay": 0.0005}
    # an integer key still takes integers only, and a word is still not a number
    with pytest.raises(ConfigError, match=r"training\.batch_size: '1e3' is not of type 'integer'"):
        validated({"training": {"batch_size": "1e3"}})
    with pytest.raises(ConfigError, match=r"training\.lr: 'fast' is not of type 'number'"):
        validated({"training": {"lr": "fast"}})


def test_a_repeated_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    text = yaml.safe_dump(MINIMAL, sort_keys=False)
    path.write_text(text + "experiments:\n  fig1c: {dataset: synth, grid: [{architectures: [mlp_1x512]}]}\n")
    first = text.splitlines().index("experiments:") + 1
    last = len(text.splitlines()) + 1
    with pytest.raises(
        ConfigError,
        match=rf"{path}, line {last}: key 'experiments' is repeated \(first on line "
        rf"{first}\); YAML keeps only the last one",
    ):
        rconfig.load(path, SCHEMA)
    path.write_text("training: {lr: 0.1, batch_size: 32, lr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"line 1: key 'lr' is repeated \(first on line 1\)"):
        rconfig.read_yaml(path)
    path.write_text("base: &b {lr: 0.1}\ntraining:\n  <<: *b\n  lr: 0.2\n")  # a merge key may be overridden
    assert rconfig.read_yaml(path)["training"] == {"lr": 0.2}


def test_every_experiment_disabled_is_an_error():
    with pytest.raises(
        ConfigError,
        match=r"config key experiments: every experiment is disabled \(fig1a\), so "
        r"there is nothing to train or report",
    ):
        validated({"experiments.fig1a.enabled": False})


@pytest.mark.parametrize(
    "name", ["all", "train", "train_pack_mlp", "data_shards", "analysis_aggregate", "figure", "table", "kernel_row"]
)
def test_an_experiment_named_like_a_rule_is_an_error(name):
    config = copy.deepcopy(MINIMAL)
    config["experiments"] = {name: config["experiments"]["fig1a"]}
    with pytest.raises(ConfigError, match=rf"config key experiments\.{name}: '{name}' is the name of a workflow rule"):
        plan.Plan(rconfig.validate(config, SCHEMA))


@pytest.mark.parametrize(
    "levels, index, trains_as",
    [
        ([0.5, 1e-7], 1, "true_labels"),
        ([0.9999999], 0, "random_labels"),
        ([0.1234567], 0, "corrupt_p0.123457"),
    ],
)
def test_a_level_its_name_cannot_hold_is_an_error(levels, index, trains_as):
    with pytest.raises(
        ConfigError,
        match=rf"experiments\.fig1a\.grid\[0\]\.corruption_levels\[{index}\]: label "
        rf"corruption level .* has more than the 6 decimals that noise names "
        rf"keep, so it would train as {trains_as}",
    ):
        validated({"experiments.fig1a.grid.0.corruption_levels": levels})


def test_levels_with_six_decimals_keep_distinct_names():
    config = validated({"experiments.fig1a.grid.0.corruption_levels": [0.000001, 0.1 + 0.2, 0.3, 0.999999]})
    names = [noise.name for noise in plan.entry_noises(config["experiments"]["fig1a"]["grid"][0])]
    assert names == ["random_labels", "corrupt_p0.000001", "corrupt_p0.3", "corrupt_p0.999999"]
    assert [parse_noise(name).name for name in names] == names
