"""The config schema (workflow/schemas/config.schema.yaml): reading a config file, checking it
against the schema with its defaults filled in, and the schema's definitions that other code
checks against (a cell's JSON, device and compile-mode names).

What a schema cannot express (a grid entry naming an unknown architecture, two experiments that
give one cell two meanings, ...) is checked where the plan is built: `rethink.plan`. Every error
names the config key (dotted path), the bad value and what is allowed.
"""

import functools
import math
import pathlib
import re

import jsonschema
import yaml

from rethink.errors import ConfigError, RethinkError

# The workflow's schema, found from the package (an editable install or a checkout: src/rethink).
SCHEMA = pathlib.Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# A number as YAML 1.2 writes it. PyYAML (and so Snakemake's config reader) follows YAML 1.1,
# which reads `1e-3` (no dot, or an unsigned exponent) as a string.
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _is_integer(checker, instance):  # not jsonschema's "any number with a zero fraction": 32.0 is a float
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker, instance):  # .inf and .nan are YAML floats, never a valid setting
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


def _validator_class(fill_defaults):
    """Draft 2020-12 with the trainer's integer and number types (no 32.0 for an integer, finite
    numbers); with `fill_defaults`, schema defaults are filled in while it validates (the
    jsonschema FAQ recipe)."""
    base = jsonschema.Draft202012Validator
    types = base.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults} if fill_defaults else {}, type_checker=types)


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def key_path(path):
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@functools.cache
def _schema_text(path):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there: 10x faster
    with open(path) as fh:
        return yaml.load(fh, Loader=loader)


def load_schema(path=SCHEMA):
    """The schema as a fresh dict (callers may change theirs)."""
    return _copy_tree(_schema_text(str(path)))


def _copy_tree(value):
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _enum(*keys):
    node = _schema_text(str(SCHEMA))
    for key in keys:
        node = node[key]
    return tuple(node["enum"])


DEVICES = _enum("$defs", "device")
COMPILE_MODES = _enum("properties", "compute", "properties", "compile")  # torch.compile's modes (and off)
MODELS = _enum("$defs", "model", "anyOf", 0)  # the registry's names (rethink.models; a test keeps them in step)


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


def validate(config, schema_path=SCHEMA):
    """Check `config` against the schema in place, filling defaults; returns it. Raises ConfigError."""
    validator = _validator_class(fill_defaults=True)(load_schema(schema_path))
    _numbers_from_strings(config, validator.iter_errors(config))
    error = _best(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"config key {key_path(error.absolute_path)}: {_message(error)}")
    return config


def load(path, schema_path=SCHEMA):
    """Read a config file and check it against the schema (rethink.plan.load also checks the rest)."""
    return validate(read_yaml(path) or {}, pathlib.Path(schema_path))


@functools.cache
def _cell_validator():
    """The schema's `cell` definition, with every hyper-parameter of `hparams` required."""
    schema = load_schema()
    hparams = schema["$defs"]["hparams"]
    hparams["required"] = list(hparams["properties"])
    return _validator_class(fill_defaults=False)({"$defs": schema["$defs"], "$ref": "#/$defs/cell"})


def check_cell(cell, source="cell"):
    """Raise RethinkError naming the key and what is allowed unless `cell` is a complete cell
    (the schema's `cell`: cell, arch, width, seed and every hyper-parameter); returns it."""
    if not isinstance(cell, dict):
        raise RethinkError(f"{source}: must be a JSON object, got {type(cell).__name__}")
    error = _best(_cell_validator().iter_errors(cell))
    if error is not None:
        raise RethinkError(f"{source}: key {key_path(error.absolute_path)}: {_message(error)}")
    return cell


def _best(errors):
    """jsonschema's most relevant error; for a value that matches no alternative of a described
    `anyOf` (a model), that whole `anyOf`, which says what may go there."""
    error = jsonschema.exceptions.best_match(errors)
    while error is not None and error.parent is not None and error.parent.validator == "anyOf":
        if "description" in error.parent.schema:
            return error.parent
        error = error.parent
    return error


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
    if error.validator == "anyOf" and "description" in error.schema:  # e.g. a model: say what may go there
        names = [name for sub in error.validator_value for name in sub.get("enum", ())]
        allowed = f" ({', '.join(names)})" if names else ""
        return f"{value!r} is not {' '.join(error.schema['description'].split())}{allowed}"
    return error.message
