"""A cell: one training run's resolved settings. Validation (the config schema's `cell`), the
fields summary.json adds to it, and the hash checkpoints are tied to."""

import hashlib
import json
import pathlib

from rethink import config
from rethink.data.randomize import DEFAULT_OPTIONS, parse_noise
from rethink.data.shards import stored_checksum
from rethink.errors import RethinkError
from rethink.fileio import canonical_json

# summary.json is the cell's own keys followed by these results (rethink.train.loop passes
# exactly these to `summary`); a cell key of one of these names is refused.
RESULT_KEYS = (
    "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc", "final_train_top5",
    "final_test_top5", "best_test_top5", "final_train_avg_loss", "final_train_avg_acc", "train_avg_acc_global",
    "best_test_acc", "best_test_step", "best_test_epoch", "steps_to_fit", "epochs_to_fit", "converged",
    "stop_reason", "steps", "epochs", "n_params", "param_norm", "num_classes", "n_train", "n_test",
    "input_shape", "inputs_sha256", "device", "device_name", "torch_version", "python_version", "wall_s",
)  # fmt: skip


def validate(cell, source="cell"):
    """Raise RethinkError naming the key and what is allowed; return the cell unchanged."""
    config.check_cell(cell, source)
    clash = [key for key in RESULT_KEYS if key in cell]
    if clash:
        raise RethinkError(f"{source}: key {clash[0]!r} is reserved for summary.json results; rename it")
    return cell


def summary(cell, **results):
    """summary.json's content: the cell, then its results (every one of RESULT_KEYS, no other)."""
    missing, extra = set(RESULT_KEYS) - set(results), set(results) - set(RESULT_KEYS)
    if missing or extra:
        raise RethinkError(f"summary of {cell['cell']}: results missing {sorted(missing)}, undeclared {sorted(extra)}")
    return dict(cell, **{key: results[key] for key in RESULT_KEYS})


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
                f"{field}={value!r} for its {split} split; pass the cell's own shards (see python -m rethink.plan)"
            )
