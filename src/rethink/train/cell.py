"""A cell: one training run's resolved settings. Validation, and the hash checkpoints are tied to."""

import hashlib
import json
import math
import pathlib

from rethink.data.randomize import DEFAULT_OPTIONS, parse_noise
from rethink.data.shards import stored_checksum
from rethink.errors import RethinkError
from rethink.fileio import canonical_json
from rethink.models import ARCHITECTURES, INITS


def _number(test, allowed):
    def check(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and test(v)

    return check, allowed


def _integer(test, allowed):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and test(v)), allowed


_BOOL = (lambda v: isinstance(v, bool)), "true or false"

# key -> (check, allowed values as the error message states them)
HPARAMS = {
    "lr": _number(lambda v: v > 0, "a number > 0"),
    "lr_decay": _number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "momentum": _number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "batch_size": _integer(lambda v: v >= 1, "an integer >= 1"),
    "max_epochs": _integer(lambda v: v >= 1, "an integer >= 1"),
    "weight_decay": _number(lambda v: v >= 0, "a number >= 0"),
    "dropout": _number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "random_crop": _BOOL,
    "crop_size": _integer(lambda v: v >= 1, "an integer >= 1"),
    "crop_pad": _integer(lambda v: v >= 0, "an integer >= 0"),
    "augment": _BOOL,
    "rotate_degrees": _number(lambda v: 0 <= v <= 180, "a number in [0, 180]"),
    "fit_threshold": _number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "eval_every_epochs": _integer(lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_minutes": _number(lambda v: v > 0, "a number > 0"),
    "device": ((lambda v: v in ("auto", "cpu", "cuda")), "one of auto, cpu, cuda"),
    "init": ((lambda v: isinstance(v, str) and v in INITS), f"one of {', '.join(INITS)}"),
}
TOP = {
    "cell": ((lambda v: isinstance(v, str) and v != ""), "a non-empty string"),
    "arch": ((lambda v: v in ARCHITECTURES), f"one of {', '.join(ARCHITECTURES)}"),
    "width": _number(lambda v: v > 0, "a number > 0"),
    "seed": _integer(lambda v: v >= 0, "an integer >= 0"),
    "hparams": ((lambda v: isinstance(v, dict)), "an object with keys " + ", ".join(HPARAMS)),
}
# summary.json's own fields; an extra cell key with one of these names would be overwritten
RESULT_KEYS = frozenset(
    """
    final_train_loss final_train_acc final_test_loss final_test_acc best_test_acc best_test_step
    best_test_epoch steps_to_fit epochs_to_fit converged stop_reason steps epochs n_params
    param_norm num_classes n_train n_test input_shape device device_name torch_version
    python_version wall_s inputs_sha256 final_train_top5 final_test_top5 best_test_top5
""".split()
)


def _check(where, spec, obj):
    missing = [k for k in spec if k not in obj]
    if missing:
        raise RethinkError(f"{where}{missing[0]} is missing; required keys: {', '.join(spec)}")
    for key, (ok, allowed) in spec.items():
        if not ok(obj[key]):
            raise RethinkError(f"{where}{key}={obj[key]!r} is invalid; allowed: {allowed}")


def validate(cell, source="cell"):
    """Raise RethinkError naming the key and its allowed values; return the cell unchanged."""
    if not isinstance(cell, dict):
        raise RethinkError(f"{source}: must be a JSON object, got {type(cell).__name__}")
    _check(f"{source}: ", TOP, cell)
    clash = sorted(RESULT_KEYS & set(cell))
    if clash:
        raise RethinkError(f"{source}: key {clash[0]!r} is reserved for summary.json results; rename it")
    hp = cell["hparams"]
    unknown = sorted(set(hp) - set(HPARAMS))
    if unknown:
        raise RethinkError(
            f"{source}: hparams.{unknown[0]} is not a known hyper-parameter; known: {', '.join(HPARAMS)}"
        )
    _check(f"{source}: hparams.", HPARAMS, hp)
    return cell


def load(path):
    path = pathlib.Path(path)
    try:
        cell = json.loads(path.read_text())
    except FileNotFoundError:
        raise RethinkError(f"{path}: cell file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RethinkError(f"{path}: cannot read cell file ({err})") from None
    except json.JSONDecodeError as err:
        raise RethinkError(f"{path}: not valid JSON ({err})") from None
    return validate(cell, str(path))


def inputs_sha256(cell, train_paths, test_paths):
    """What a checkpoint must match to be resumed: the canonical cell and every shard's content."""
    digest = hashlib.sha256(canonical_json(cell).encode())
    for split, paths in (("train", train_paths), ("test", test_paths)):
        for path in paths:
            digest.update(f"|{split}:{stored_checksum(path)}".encode())
    return digest.hexdigest()


def check_shards(cell, split, attrs, path):
    """Refuse shards that are not this cell's: each identity attribute the cell states (dataset,
    noise, seed, level) must match shard 0's (read_split already made its shards agree)."""
    expected = {"split": split}
    if "dataset" in cell:
        expected["dataset"] = cell["dataset"]
    if "noise" in cell:
        # a cell without `test_labels` (hand-written) means the default, clean test labels
        test_labels = cell.get("test_labels", DEFAULT_OPTIONS["test_labels"])
        randomized = split in parse_noise(cell["noise"]).splits(test_labels)
        expected["noise"] = cell["noise"] if randomized else "clean"
        if randomized:
            expected["seed"] = cell["seed"]
            if "level" in cell:
                expected["level"] = cell["level"]
    for field, value in expected.items():
        if attrs.get(field) != value:
            raise RethinkError(
                f"{path}: this shard has {field}={attrs.get(field)!r}, but cell {cell['cell']} needs "
                f"{field}={value!r} for its {split} split; pass the cell's own shards (see python -m rethink.grid)"
            )
