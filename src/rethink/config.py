"""Config validation: JSON schema with defaults, then the checks a schema cannot express.

Every error names the config key (dotted path), the bad value and what is allowed, and is
raised before any job runs: everything the trainer and the data rules would reject is rejected
here, before any output is touched.
"""

import math
import pathlib
import re
import sys

import jsonschema
import yaml

from rethink import grid
from rethink.data import sources
from rethink.errors import ConfigError, RethinkError

# The workflow's own rule names: `all`, and a stage prefix for every other rule (a workflow test
# checks each rule against these). An experiment is a target rule too (`snakemake fig1c`), so it
# may not take one of these names.
WORKFLOW_RULES = ("all",)
RULE_PREFIXES = ("data_", "train_", "analysis_", "figure_", "table_", "kernel_")
# A number as YAML 1.2 writes it. PyYAML (and so Snakemake's config reader) follows YAML 1.1,
# which reads `1e-3` (no dot, or an unsigned exponent) as a string.
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _is_integer(checker, instance):  # not jsonschema's "any number with a zero fraction": 32.0 is a float
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker, instance):  # .inf and .nan are YAML floats, never a valid setting
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


def _with_defaults(validator_class):
    """A validator that fills in schema defaults while it validates (the jsonschema FAQ recipe),
    with the integer and number types of the trainer (no 32.0 for an integer, finite numbers)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    types = validator_class.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=types)


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def key_path(path):
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_schema(path):
    with open(path) as fh:
        return yaml.safe_load(fh)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a repeated key is an error instead of silently
    replacing the first (a second `experiments:` block would drop the first one)."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat and override
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in first:
                raise ConfigError(
                    f"{key_node.start_mark.name}, line {line}: key {key!r} is repeated (first on line "
                    f"{first[key]}); YAML keeps only the last one, so merge the two into one"
                )
            first.setdefault(key, line)
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """A config file's content, refusing repeated keys (Snakemake's own reader keeps the last)."""
    path = pathlib.Path(path)
    try:
        with open(path) as fh:
            return yaml.load(fh, Loader=_UniqueKeyLoader)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable YAML config ({err})") from None


def validate(config, schema_path):
    """Validate `config` in place (filling defaults); returns it. Raises ConfigError."""
    schema = load_schema(schema_path)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    _numbers_from_strings(config, validator.iter_errors(config))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"config key {key_path(error.absolute_path)}: {_message(error)}")
    # the schema's `model` enum: the model registry's names without importing torch (a test
    # keeps the two in step)
    models = schema["properties"]["architectures"]["additionalProperties"]["properties"]["model"]["enum"]
    _check_semantics(config, models)
    return config


def _wanted_types(error):
    """The types a failed `type` check asked for (none for other checks)."""
    if error.validator != "type":
        return ()
    wanted = error.validator_value
    return (wanted,) if isinstance(wanted, str) else tuple(wanted)


def _numbers_from_strings(config, errors):
    """Where the schema wants a number and the config holds a string that YAML 1.2 reads as one
    (`lr: 1e-3`), store the number."""
    for error in list(errors):
        value = error.instance
        if "number" in _wanted_types(error) and isinstance(value, str) and _NUMBER.fullmatch(value):
            *parents, last = error.absolute_path
            node = config
            for part in parents:
                node = node[part]
            node[last] = float(value)


def _message(error):
    value = error.instance
    if _wanted_types(error) and isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if value.is_integer() and "integer" in _wanted_types(error):
            return f"{value} is not an integer (write {int(value)})"
    return error.message


def _skip_missing_streamed(config):
    """ImageNet cannot be downloaded: experiments on a streamed dataset whose root is not there are
    switched off with one message (the paper config enables Fig. 2a and Table 2 for users who
    have ImageNet, and still runs everything else for those who do not)."""
    for name, spec in config["datasets"].items():
        users = [e for e, exp in config["experiments"].items() if exp["dataset"] == name and exp["enabled"]]
        if not users or not sources.streamed(spec):
            continue
        try:
            sources.check_available(spec)
        except RethinkError:
            for exp_name in users:
                config["experiments"][exp_name]["enabled"] = False
            print(
                f"rethink: skipping experiments {', '.join(users)}: no {spec['source']} at "
                f"{sources.root_of(spec)} (train/ and val/); set datasets.{name}.root to run them",
                file=sys.stderr,
            )


def _check_semantics(config, models):
    datasets = config["datasets"]
    for name, spec in datasets.items():
        spec["name"] = name
        if spec["source"] != "synthetic":
            spec.pop("synthetic", None)  # only the synthetic source reads it; keep specs minimal
        if not sources.streamed(spec):
            spec.pop("stream", None)  # only streamed sources read it
    for name, arch in config["architectures"].items():
        arch.setdefault("model", name)
        if arch["model"] not in models:  # an explicit `model` the schema has already checked
            raise ConfigError(
                f"config key architectures.{name}: {name!r} is not a model name, so set "
                f"architectures.{name}.model to one of {', '.join(models)}"
            )
    experiments = config["experiments"]
    _skip_missing_streamed(config)
    if not any(exp["enabled"] for exp in experiments.values()):
        raise ConfigError(
            f"config key experiments: every experiment is disabled ({', '.join(experiments)}), so there is "
            "nothing to train or report; set enabled: true on at least one"
        )
    for exp_name, exp in experiments.items():
        if exp_name in WORKFLOW_RULES or exp_name.startswith(RULE_PREFIXES):
            raise ConfigError(
                f"config key experiments.{exp_name}: {exp_name!r} is the name of a workflow rule (an "
                f"experiment becomes a target rule); rule names are {', '.join(WORKFLOW_RULES)} and "
                f"{', '.join(p + '*' for p in RULE_PREFIXES)}, so rename the experiment"
            )
        if exp["dataset"] not in datasets:
            raise ConfigError(
                f"config key experiments.{exp_name}.dataset: {exp['dataset']!r} is not a "
                f"configured dataset (configured: {', '.join(sorted(datasets))})"
            )
    # unknown architecture/regularizer names, conflicting cells, crops that do not fit
    _check_gpus(config, grid.expand(config)[0])
    _check_kernel(config)


def _check_gpus(config, cells):
    """A cell on several GPUs is a job of its own, and its global batch splits evenly over them."""
    pack = config["compute"]["pack"]
    for cell, spec in cells.values():
        gpus = config["architectures"][cell.arch]["gpus"]
        if gpus > 1 and pack > 1:
            raise ConfigError(
                f"config key architectures.{cell.arch}.gpus: {gpus} processes train each of its cells, so a "
                f"job holds one cell, but compute.pack is {pack}; set compute.pack: 1 or gpus: 1"
            )
        batch = spec["hparams"]["batch_size"]
        if batch % gpus:
            raise ConfigError(
                f"config key architectures.{cell.arch}.gpus: {gpus} does not divide cell {cell.id}'s "
                f"batch_size {batch} (the global batch, split evenly over the GPUs); make batch_size a "
                f"multiple of {gpus} or change gpus"
            )


def _check_kernel(config):
    """Kernel rows and Theorem 1 name configured datasets."""
    datasets = config["datasets"]
    wanted = [(f"kernel.rows.{name}.dataset", row["dataset"]) for name, row in config["kernel"]["rows"].items()]
    theorem = config["theorem1"]
    if theorem["dataset_sizes"] and theorem["dataset"] is None:
        raise ConfigError(
            f"config key theorem1.dataset_sizes: {theorem['dataset_sizes']} needs theorem1.dataset (a key of datasets)"
        )
    if theorem["dataset"] is not None:
        wanted.append(("theorem1.dataset", theorem["dataset"]))
    for key, name in wanted:
        if name not in datasets:
            raise ConfigError(
                f"config key {key}: {name!r} is not a configured dataset (configured: {', '.join(sorted(datasets))})"
            )


def load(path, schema_path):
    """Read and validate a config file (for CLIs and tests; Snakemake reads its own)."""
    return validate(read_yaml(path) or {}, pathlib.Path(schema_path))
