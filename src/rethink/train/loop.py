"""Train one cell: the whole split on the device, SGD with per-epoch lr decay, evaluation on the
whole training and test sets, checkpoint/resume. `train()` is the entry point.
"""

import csv
import hashlib
import io
import json
import math
import pathlib
import platform
import signal
import time

import torch
import torch.nn.functional as F

from rethink.data.shards import read_split_tensors
from rethink.errors import RethinkError
from rethink.fileio import write_text_atomic
from rethink.models import build_model, count_parameters
from rethink.train import cell as cells
from rethink.train import checkpoint, preprocess

HISTORY_COLUMNS = ("step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "elapsed_s")
EVAL_BATCH = 500  # evaluation is in eval mode, so its batch size changes nothing but memory


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RethinkError("device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return name


def stream_seed(seed, stream):
    """Independent seeds per use: the same integer would give the global and data RNGs one stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


def load_data(train_paths, test_paths, crop_size, device):
    train, attrs = read_split_tensors(train_paths, ("images", "labels"))
    test, _ = read_split_tensors(test_paths, ("images", "labels"))
    shape = tuple(train["images"].shape[1:])
    if shape != tuple(test["images"].shape[1:]):
        raise RethinkError(
            f"train images are {shape} but test images are {tuple(test['images'].shape[1:])}; "
            "the train and test shards come from different datasets"
        )
    if len(shape) != 3 or min(shape[1:]) < crop_size:
        raise RethinkError(f"images of shape {shape} are smaller than hparams.crop_size={crop_size}")
    if not len(train["labels"]) or not len(test["labels"]):
        raise RethinkError("the train or test split is empty")
    # The dataset's class count, not the largest label seen: a small subset may miss a class.
    num_classes = int(attrs["num_classes"])
    if max(train["labels"].max(), test["labels"].max()) >= num_classes:
        raise RethinkError(f"labels exceed the {num_classes} classes the shards declare")
    arrays = (train["images"], train["labels"], test["images"], test["labels"])
    return [a.to(device) for a in arrays], num_classes, shape


@torch.no_grad()
def evaluate(model, images, labels, crop_size, amp, fmt):
    """Mean loss and accuracy over a whole split; one host sync, at the end."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=labels.device)
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    for i in range(0, len(labels), EVAL_BATCH):
        x, y = preprocess.eval_view(images[i : i + EVAL_BATCH], crop_size), labels[i : i + EVAL_BATCH]
        with amp():
            logits = model(fmt(x)).float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss.item() / len(labels), correct.item() / len(labels)


def setup(cell, input_shape, num_classes, dev):
    """Model, optimizer and device wrappers, as the loop (and bench/bench_train.py) trains them."""
    hp, cuda = cell["hparams"], dev.type == "cuda"
    torch.manual_seed(cell["seed"])  # the global RNGs: weight init and dropout masks
    model = build_model(cell["arch"], input_shape, num_classes, cell["width"], hp["dropout"]).to(dev)
    convs = cuda and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if convs:  # channels_last helps convolutions only; an MLP would just pay for the copy
        model = model.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes all run long; the last batch tunes once
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                          weight_decay=hp["weight_decay"], fused=True if cuda else None)

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)

    def fmt(x):
        return x.contiguous(memory_format=torch.channels_last) if convs else x

    return model, opt, amp, fmt


def sgd_step(model, opt, x, y, amp, fmt):
    with amp():
        loss = F.cross_entropy(model(fmt(x)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()  # the loss stays on the device: reading it would sync every step


def stop_reason(run, hp):
    last = run["history"][-1]
    if not math.isfinite(last["train_loss"]):
        return "diverged"
    if last["train_acc"] >= hp["fit_threshold"]:
        return "fit_threshold"
    if run["epoch"] >= hp["max_epochs"]:
        return "max_epochs"
    return None


def train(cell, train_paths, test_paths, out_dir, checkpoint_path, device=None, echo=True):
    """Train `cell` (a validated cell dict); write history.csv, summary.json, train.log to out_dir."""
    cells.validate(cell)
    dev = torch.device(resolve_device(device or cell["hparams"]["device"]))
    key = cells.inputs_sha256(cell, train_paths, test_paths)
    state = checkpoint.load(checkpoint_path, key, dev.type)  # refuse a stale one before the slow load
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)  # free on CPU; makes resume bit-identical
    try:
        out_dir = pathlib.Path(out_dir)
        return _train(cell, train_paths, test_paths, out_dir, checkpoint_path, dev, key, state, echo)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(cell, train_paths, test_paths, out_dir, ckpt_path, dev, key, state, echo):
    hp, cuda = cell["hparams"], dev.type == "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "train.log", echo)
    crop, bs = hp["crop_size"], hp["batch_size"]
    lr_at = lambda epoch: hp["lr"] * hp["lr_decay"] ** epoch  # noqa: E731  (no scheduler state to resume)
    (x_train, y_train, x_test, y_test), num_classes, shape = load_data(train_paths, test_paths, crop, dev)

    model, opt, amp, fmt = setup(cell, (shape[0], crop, crop), num_classes, dev)
    gen = torch.Generator(dev).manual_seed(stream_seed(cell["seed"], "data"))  # permutations, crops, flips
    run = dict(epoch=0, pos=0, step=0, perm=None, history=[], elapsed_s=0.0)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if cuda:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        run.update({k: state[k] for k in ("epoch", "pos", "step", "history", "elapsed_s")})
        run["perm"] = state["perm"].to(dev)

    n, steps_per_epoch = len(y_train), math.ceil(len(y_train) / bs)
    t0 = time.monotonic() - run["elapsed_s"]
    next_save = time.monotonic() + 60 * hp["checkpoint_minutes"]
    if state:
        log(f"resume from {ckpt_path} at epoch {run['epoch']} step {run['step']}")
    else:
        log(f"start cell={cell['cell']} arch={cell['arch']} width={cell['width']} seed={cell['seed']} "
            f"device={dev.type} n_train={n} n_test={len(y_test)} input={shape} classes={num_classes} "
            f"params={count_parameters(model)} steps/epoch={steps_per_epoch}")

    def record():
        train_loss, train_acc = evaluate(model, x_train, y_train, crop, amp, fmt)
        test_loss, test_acc = evaluate(model, x_test, y_test, crop, amp, fmt)
        lr = lr_at(max(run["epoch"] - 1, 0))  # the lr the last epoch trained with
        row = dict(step=run["step"], epoch=run["epoch"], lr=lr, train_loss=train_loss, train_acc=train_acc,
                   test_loss=test_loss, test_acc=test_acc, elapsed_s=time.monotonic() - t0)
        run["history"].append(row)
        log(f"epoch {row['epoch']:4d} step {row['step']:7d} lr {lr:.4g} train loss {train_loss:.4f} "
            f"acc {train_acc:.4f} test loss {test_loss:.4f} acc {test_acc:.4f} "
            f"elapsed {row['elapsed_s']:.1f}s")

    def boundary(signals):
        nonlocal next_save
        if signals.pending is None and time.monotonic() < next_save:
            return
        checkpoint.save(ckpt_path, dict(
            inputs_sha256=key, device_type=dev.type, model=model.state_dict(), optimizer=opt.state_dict(),
            generator=gen.get_state(), torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(dev) if cuda else None,
            **{k: run[k] for k in ("epoch", "pos", "step", "perm", "history")},
            elapsed_s=time.monotonic() - t0,
        ))  # fmt: skip
        next_save = time.monotonic() + 60 * hp["checkpoint_minutes"]
        sig, signals.pending = signals.pending, None
        if sig is not None:
            log(f"{sig.name}: checkpoint saved at epoch {run['epoch']} step {run['step']}")
        if sig == signal.SIGTERM:
            raise checkpoint.Interrupted(sig, ckpt_path)

    with checkpoint.Signals() as signals:
        if not run["history"]:
            record()  # epoch 0: the untrained network
        while (reason := stop_reason(run, hp)) is None:
            if run["pos"] == 0:
                run["perm"] = torch.randperm(n, generator=gen, device=dev)
            for group in opt.param_groups:
                group["lr"] = lr_at(run["epoch"])
            model.train()
            while run["pos"] < steps_per_epoch:
                idx = run["perm"][run["pos"] * bs : (run["pos"] + 1) * bs]
                x = preprocess.train_view(x_train[idx], hp, gen)
                sgd_step(model, opt, x, y_train[idx], amp, fmt)
                run["pos"] += 1
                run["step"] += 1
                boundary(signals)  # a no-op unless a save is due: no host sync per step
            run.update(epoch=run["epoch"] + 1, pos=0, perm=None)
            if run["epoch"] % hp["eval_every_epochs"] == 0 or run["epoch"] == hp["max_epochs"]:
                record()
            else:
                log(f"epoch {run['epoch']:4d} step {run['step']:7d} lr {lr_at(run['epoch'] - 1):.4g} "
                    f"(not evaluated) elapsed {time.monotonic() - t0:.1f}s")

    summary = _summary(cell, run, reason, model, key, dev, num_classes, n, len(y_test), 
                       (shape[0], crop, crop))
    _write_history(out_dir / "history.csv", run["history"])
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log(f"stop: {reason} at epoch {run['epoch']} step {run['step']} final train acc "
        f"{summary['final_train_acc']:.4f} test acc {summary['final_test_acc']:.4f} "
        f"wall {summary['wall_s']:.1f}s")
    pathlib.Path(ckpt_path).unlink(missing_ok=True)
    return summary


def _summary(cell, run, reason, model, key, dev, num_classes, n_train, n_test, input_shape):
    history, fitted = run["history"], reason == "fit_threshold"
    last = history[-1]
    best = max(history, key=lambda r: r["test_acc"])  # the first of equal maxima
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    with torch.no_grad():
        norm = math.sqrt(sum(p.detach().double().square().sum().item() for p in model.parameters()))
    return dict(
        cell,
        final_train_loss=finite(last["train_loss"]), final_train_acc=last["train_acc"],
        final_test_loss=finite(last["test_loss"]), final_test_acc=last["test_acc"],
        best_test_acc=best["test_acc"], best_test_step=best["step"], best_test_epoch=best["epoch"],
        steps_to_fit=last["step"] if fitted else None, epochs_to_fit=last["epoch"] if fitted else None,
        converged=fitted, stop_reason=reason, steps=run["step"], epochs=run["epoch"],
        n_params=count_parameters(model), param_norm=finite(norm), num_classes=num_classes,
        n_train=n_train, n_test=n_test, input_shape=list(input_shape), inputs_sha256=key,
        device=dev.type, device_name=device_name(dev), torch_version=torch.__version__,
        python_version=platform.python_version(), wall_s=last["elapsed_s"],
    )  # fmt: skip


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_history(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats as repr: exact, so histories compare bit for bit
    write_text_atomic(path, text.getvalue())


class Log:
    """train.log, appended to across resumes; each line also echoed to stdout."""

    def __init__(self, path, echo=True):
        self.path, self.echo = path, echo

    def __call__(self, message):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)
