"""Config validation: JSON schema with defaults, then the checks a schema cannot express.

Every error names the config key (dotted path), the bad value and what is allowed, and is
raised before any job runs.
"""

import pathlib

import jsonschema
import yaml

from rethink import grid
from rethink.errors import ConfigError


def _with_defaults(validator_class):
    """A validator that fills in schema defaults while it validates (the jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


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


def validate(config, schema_path):
    """Validate `config` in place (filling defaults); returns it. Raises ConfigError."""
    schema = load_schema(schema_path)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"config key {key_path(error.absolute_path)}: {error.message}")
    # the schema's `model` enum: the model registry's names without importing torch (a test
    # keeps the two in step)
    models = schema["properties"]["architectures"]["additionalProperties"]["properties"]["model"]["enum"]
    _check_semantics(config, models)
    return config


def _check_semantics(config, models):
    datasets = config["datasets"]
    for name, spec in datasets.items():
        spec["name"] = name
        if spec["source"] != "synthetic":
            spec.pop("synthetic", None)  # only the synthetic source reads it; keep specs minimal
    for name, arch in config["architectures"].items():
        arch.setdefault("model", name)
        if arch["model"] not in models:  # an explicit `model` the schema has already checked
            raise ConfigError(
                f"config key architectures.{name}: {name!r} is not a model name, so set "
                f"architectures.{name}.model to one of {', '.join(models)}"
            )
    for exp_name, exp in config["experiments"].items():
        if exp["dataset"] not in datasets:
            raise ConfigError(
                f"config key experiments.{exp_name}.dataset: {exp['dataset']!r} is not a "
                f"configured dataset (configured: {', '.join(sorted(datasets))})"
            )
    grid.expand(config)  # unknown architecture/regularizer names, conflicting cells


def load(path, schema_path):
    """Read and validate a config file (for CLIs and tests; Snakemake reads its own)."""
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    return validate(config, pathlib.Path(schema_path))
