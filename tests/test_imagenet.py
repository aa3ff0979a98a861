"""ImageNet: a synthetic folder in the real layout (real JPEG files of varied sizes, a PNG and a CMYK
JPEG among them, val/ flat with the devkit or in class folders) -> index -> JPEG shards -> the
streaming reader -> Inception V3 training a few steps, and resumed mid-epoch bit for bit."""

import io
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rethink.data import imagenet, prepare
from rethink.data.shards import ShardError, read_shard
from rethink.errors import RethinkError
from rethink.fileio import canonical_json
from rethink.train import checkpoint, distributed, loop, stream

from conftest import REPO, SCHEMA, flip_byte_in_chunk
from realformat import IMAGENET_WNIDS, write_imagenet
from test_train import HPARAMS as TRAIN_HPARAMS

PER_CLASS, N_VAL, SHARD_SIZE = 6, 8, 5  # 24 train images in 5 shards, 8 val images in 2
N_TRAIN = PER_CLASS * len(IMAGENET_WNIDS)
SHARDS = {"size": 50000, "compression": "lzf", "chunk_samples": 256}
# the trainer tests' hyper-parameters, at Inception V3's smallest input, with TF-slim's crop and flip
HPARAMS = dict(
    TRAIN_HPARAMS, batch_size=4, max_epochs=1, random_crop=True, crop_size=75, crop_pad=0, augment=True,
    rotate_degrees=0.0,
)  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dataset_spec(root):
    return {
        "name": "inet", "source": "imagenet", "root": str(root), "download": False, "verify": True,
        "subset": {"train": N_TRAIN, "test": N_VAL, "how": "stratified", "seed": 0},
        "stream": {"shard_size": SHARD_SIZE, "shuffle_seed": 0, "window_shards": 2},
    }  # fmt: skip


def write_split(data, dataset, split):
    """What the data rules run for one split: the index job, then one job per shard."""
    spec_json = canonical_json({"dataset": dataset, "shards": SHARDS})
    index = data / f"{split}-index.json"
    prepare.main(["index", "--spec", spec_json, "--split", split, "--out", str(index)])
    count = -(-(N_TRAIN if split == "train" else N_VAL) // SHARD_SIZE)
    paths = [str(data / f"{split}-{i:05d}.h5") for i in range(count)]
    for i, path in enumerate(paths):
        prepare.main(["clean", "--spec", spec_json, "--split", split, "--shard", str(i), "--index", str(index),
                      "--out", path])  # fmt: skip
    return paths


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    """A flat-val ImageNet root (with the devkit), its index and clean shards."""
    base = tmp_path_factory.mktemp("imagenet")
    truth = write_imagenet(base / "root", PER_CLASS, N_VAL, val_layout="flat")
    dataset = dataset_spec(base / "root")
    shards = {split: write_split(base / "data", dataset, split) for split in ("train", "test")}
    return base, dataset, truth, shards


def test_both_val_layouts_give_every_image_its_class(tmp_path):
    for layout in ("flat", "folders"):
        truth = write_imagenet(tmp_path / layout, 2, N_VAL, val_layout=layout, seed=1)
        for split in ("train", "test"):
            classes, files, labels = imagenet.list_split(tmp_path / layout, split)
            assert classes == IMAGENET_WNIDS and len(files) == (8 if split == "train" else N_VAL)
            assert [classes[k] for k in labels] == [truth[f] for f in files]


def test_flat_val_without_devkit_is_a_clear_error(tmp_path):
    write_imagenet(tmp_path, 1, 4, val_layout="flat")
    (tmp_path / imagenet.DEVKIT / imagenet.GROUND_TRUTH).unlink()
    with pytest.raises(RethinkError, match="devkit's ground truth is needed.*ILSVRC2012_devkit_t12.tar.gz"):
        imagenet.list_split(tmp_path, "test")


def test_shards_hold_every_image_once_as_rgb_jpeg_with_its_label(inet):
    base, _, truth, shards = inet
    index = imagenet.read_index(base / "data" / "train-index.json")
    seen, reencoded = [], 0
    for position, path in enumerate(shards["train"]):
        arrays, attrs = read_shard(path)
        assert attrs["format"] == "jpeg" and attrs["shard_index"] == position and attrs["num_classes"] == 4
        reencoded += attrs["reencoded"]
        for i, label in enumerate(arrays["labels"]):
            blob = arrays["jpeg"][arrays["offsets"][i] : arrays["offsets"][i + 1]].tobytes()
            with Image.open(io.BytesIO(blob)) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert (image.height, image.width) == tuple(arrays["sizes"][i])
            name = index["files"][position * SHARD_SIZE + i]
            assert IMAGENET_WNIDS[label] == truth[name]
            seen.append(name)
    assert sorted(seen) == sorted(f for f in truth if f.startswith("train/"))
    assert reencoded == 2  # the PNG and the CMYK JPEG
    # the index mixed the classes: the first shard is not one class
    assert len(set(read_shard(shards["train"][0], ["labels"])[0]["labels"])) > 1


def test_a_range_job_writes_the_shards_one_shard_jobs_write_and_its_rerun_keeps_the_finished_ones(
    inet, tmp_path, monkeypatch, capsys
):
    """`clean --shards FIRST-LAST` (one data_<dataset>_<split>_rNNN job) gives the bytes of one call
    per shard. A job killed mid-range has its outputs deleted by Snakemake, but its finished
    shards wait in the staging folder: the rerun verifies and reuses them, writes the rest."""
    base, dataset, _, shards = inet
    spec_json = canonical_json({"dataset": dataset, "shards": SHARDS})
    outs = [str(tmp_path / "out" / pathlib.Path(p).name) for p in shards["train"]]
    argv = ["clean", "--spec", spec_json, "--split", "train", "--shards", f"0-{len(outs) - 1}",
            "--index", str(base / "data" / "train-index.json"), "--staging", str(tmp_path / "staging"),
            "--out", *outs]  # fmt: skip
    written, real = [], prepare._make_jpeg_shard

    def killed_at_shard_3(dataset, shards_cfg, identity, *args):
        if identity["shard_index"] == 3:
            raise KeyboardInterrupt  # the job dies here
        written.append(identity["shard_index"])
        return real(dataset, shards_cfg, identity, *args)

    monkeypatch.setattr(prepare, "_make_jpeg_shard", killed_at_shard_3)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(argv)
    assert written == [0, 1, 2] and not any(pathlib.Path(p).exists() for p in outs)
    monkeypatch.setattr(prepare, "_make_jpeg_shard", lambda *a: written.append(a[2]["shard_index"]) or real(*a))
    prepare.main(argv)
    assert written == [0, 1, 2, 3, 4]  # the rerun wrote only the shards the killed job had not finished
    for mine, theirs in zip(outs, shards["train"], strict=True):
        assert pathlib.Path(mine).read_bytes() == pathlib.Path(theirs).read_bytes()
    assert not (tmp_path / "staging").exists()  # nothing left behind
    with pytest.raises(SystemExit):
        prepare.main(argv[:6] + ["1-0"] + argv[7:])
    assert "--shards '1-0': expected FIRST-LAST" in capsys.readouterr().err


def test_a_damaged_jpeg_byte_is_caught_naming_the_shard(inet, tmp_path):
    damaged = tmp_path / "train-00000.h5"
    damaged.write_bytes(pathlib.Path(inet[3]["train"][0]).read_bytes())
    flip_byte_in_chunk(damaged, "jpeg")
    with pytest.raises(ShardError, match=f"{damaged}: checksum mismatch"):
        read_shard(damaged, ["jpeg"])


def test_random_labels_link_the_images_and_stay_fixed_across_epochs(inet, tmp_path):
    base, dataset, _, shards = inet
    spec_json = canonical_json({"dataset": dataset, "shards": SHARDS, "randomization": {}})
    paths = []
    for i, clean in enumerate(shards["train"]):
        paths.append(str(tmp_path / f"train-{i:05d}.h5"))
        prepare.main(["randomize", "--spec", spec_json, "--noise", "random_labels", "--seed", "3", "--split",
                      "train", "--shard", str(i), "--clean", clean, "--out", paths[-1]])  # fmt: skip
        with h5py.File(paths[-1]) as f:
            for name in ("jpeg", "offsets", "sizes"):
                assert isinstance(f.get(name, getlink=True), h5py.ExternalLink)
    noisy = np.concatenate([read_shard(p, ["labels"])[0]["labels"] for p in paths])
    true = np.concatenate([read_shard(p, ["labels"])[0]["labels"] for p in shards["train"]])
    assert (noisy != true).mean() > 0.5
    split = stream.StreamedSplit(paths, read_shard(paths[0], ["labels"])[1], 2, torch.device("cpu"))
    hp = dict(HPARAMS, batch_size=7)
    for epoch_seed in (11, 12):  # two epochs: other orders, the same label for each image
        order = stream.epoch_order(split.counts, split.window, epoch_seed)
        ys = torch.cat([y for _, y in split.train_batches({"seed": torch.tensor([epoch_seed])}, 0, hp)])
        assert torch.equal(ys, torch.from_numpy(noisy[order]))
    split.close()


def test_stream_order_is_seeded_and_resumes_at_any_step(inet):
    _, _, _, shards = inet
    split = stream.StreamedSplit(shards["train"], read_shard(shards["train"][0], ["labels"])[1], 2, torch.device("cpu"))
    orders = [stream.epoch_order(split.counts, 2, seed) for seed in (5, 5, 6)]
    assert sorted(orders[0]) == list(range(N_TRAIN)) and np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])
    plan = {"seed": torch.tensor([5])}
    full = list(split.train_batches(plan, 0, HPARAMS))
    assert len(full) == N_TRAIN // HPARAMS["batch_size"] and full[0][0].shape == (4, 3, 75, 75)
    assert -1 <= full[0][0].min() and full[0][0].max() <= 1 + 1e-6  # bilinear may overshoot by rounding
    tail = list(split.train_batches(plan, 4, HPARAMS))  # a resumed epoch: the same batches, bit for bit
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[4:], tail, strict=True))
    # several processes: each decodes its part of every batch, with the whole batch's draws
    parts = [list(split.train_batches(plan, 0, HPARAMS, world=distributed.World(r, 3, r, None))) for r in range(3)]
    for b, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([p[b][0] for p in parts]), x) and torch.equal(
            torch.cat([p[b][1] for p in parts]), y
        )
    off = list(split.train_batches(plan, 0, dict(HPARAMS, random_crop=False, augment=False)))
    assert not torch.equal(off[0][0], full[0][0])  # augmentation switched off: the central view
    evals = list(split.eval_batches(75))
    first = np.arange(4)
    boxes = [stream.central_box(*s) for s in split.sizes[:4]]
    assert torch.equal(evals[0][0][:4], split._batch(first, boxes, [False] * 4, 75, split._load(first))[0])
    split.close()


def cell(dataset):
    return {
        "cell": "inet/inception_v3/none/true_labels/s0", "dataset": "inet", "arch": "inception_v3",
        "arch_name": "inception_v3", "width": 1.0, "regularizer": "none", "noise": "true_labels", "level": 0.0,
        "seed": 0, "test_labels": "clean", "hparams": HPARAMS, "stream": {"window_shards": 2},
    }  # fmt: skip


def test_inception_v3_trains_streamed_and_resumes_mid_epoch_bit_identically(inet, tmp_path):
    """Torchvision's Inception V3 at full width (it has no width knob) on 75x75 inputs, the
    smallest it takes: one epoch of 6 steps straight, and interrupted after 3 steps then resumed."""
    _, dataset, _, shards = inet
    job = loop.Job(cell(dataset), shards["train"], shards["test"], tmp_path / "straight", tmp_path / "s.pt")
    (summary,) = loop.train(job, echo=False)
    assert summary["steps"] == 6 and summary["n_train"] == N_TRAIN and summary["num_classes"] == 4
    assert 0 <= summary["final_test_acc"] <= summary["final_test_top5"] <= 1 and summary["final_train_top5"] >= 0
    header = (tmp_path / "straight" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"step", "train_top5", "test_top5"} <= set(header)

    dev = torch.device("cpu")
    resumed = loop.Job(cell(dataset), shards["train"], shards["test"], tmp_path / "resumed", tmp_path / "r.pt")
    torch.use_deterministic_algorithms(True)
    try:
        cache = loop.SplitCache(dev)
        data = (cache.get(shards["train"], "train", resumed.cell), cache.get(shards["test"], "test", resumed.cell))
        member = loop.Member(resumed, "k", None, data, dev, echo=False)
        for _ in range(3):
            member.train_step()
        member.save()
        member.train_split.close()
        state = checkpoint.load(resumed.checkpoint, "k", "cpu")
        data = (cache.get(shards["train"], "train", resumed.cell), cache.get(shards["test"], "test", resumed.cell))
        member = loop.Member(resumed, "k", state, data, dev, echo=False)
        while member.reason is None:
            member.train_step()
        summary_resumed = member.finish()
    finally:
        torch.use_deterministic_algorithms(False)
    untimed = {"wall_s", "inputs_sha256"}
    assert {k: v for k, v in summary_resumed.items() if k not in untimed} == {
        k: v for k, v in summary.items() if k not in untimed
    }
    histories = [history_without_time(tmp_path / d / "history.csv") for d in ("straight", "resumed")]
    assert histories[0] == histories[1] and len(histories[0]) == 3  # header, epoch 0, epoch 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_nvjpeg_decodes_the_batches_pillow_decodes_and_inception_v3_trains(inet, tmp_path):
    """The CUDA path of the streamed split (`make gpu-check` runs it): torchvision's nvJPEG decode
    on the GPU gives the CPU (Pillow) batches within JPEG decoders' rounding (IDCT and chroma
    upsampling differ by a few levels of 255), and a streamed Inception V3 cell trains on CUDA."""
    _, dataset, _, shards = inet
    attrs = read_shard(shards["train"][0], ["labels"])[1]
    plan, batches = {"seed": torch.tensor([5])}, {}
    for name in ("cpu", "cuda"):
        split = stream.StreamedSplit(shards["train"], attrs, 2, torch.device(name))
        batches[name] = [(x.cpu(), y.cpu()) for x, y in split.train_batches(plan, 0, HPARAMS)]
        split.close()
    for (xc, yc), (xg, yg) in zip(batches["cpu"], batches["cuda"], strict=True):
        diff = (xc - xg).abs()
        assert torch.equal(yc, yg) and diff.mean() < 0.02 and diff.max() < 0.25, (diff.mean(), diff.max())
    gpu_cell = cell(dataset)
    gpu_cell["hparams"] = dict(HPARAMS, device="cuda")
    job = loop.Job(gpu_cell, shards["train"], shards["test"], tmp_path / "cuda", tmp_path / "cuda.pt")
    (summary,) = loop.train(job, echo=False)
    assert summary["device"] == "cuda" and summary["steps"] == 6 and 0 <= summary["final_test_top5"] <= 1


def history_without_time(path):
    rows = [line.split(",") for line in path.read_text().splitlines()]
    at = rows[0].index("elapsed_s")
    return [row[:at] + row[at + 1 :] for row in rows]


def test_paper_config_skips_imagenet_with_one_message_when_there_is_none(capsys, monkeypatch, tmp_path):
    from rethink import plan

    monkeypatch.chdir(tmp_path)  # no data/imagenet here
    paper = plan.load(REPO / "config/paper.yaml", SCHEMA)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipping experiments fig2a, table2: no imagenet at data/imagenet" in err
    cells, experiments = paper.cells, paper.experiments
    assert "fig2a" not in experiments and not any(c.startswith("imagenet/") for c in cells)


@pytest.mark.workflow
def test_slurm_dry_run_of_the_paper_config_lists_the_imagenet_cells_with_gpu_and_runtime(workflow):
    write_imagenet(workflow.root / "data/imagenet", 2, N_VAL, val_layout="flat")
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    paper["datasets"]["imagenet"]["subset"] = {"train": 8, "test": N_VAL}
    paper["datasets"]["imagenet"]["stream"].update(shard_size=3, shards_per_job=2)  # 3 shards a split
    configfile = workflow.write_config(paper)
    out = workflow.run("-n", "--profile", "profiles/slurm", "--configfile", configfile).stdout
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        name, body = block.split(":", 1)
        jobs.setdefault(name, []).append(body)
    training = [body for body in jobs["train"] if "results/cells/imagenet/inception_v3/" in body]
    assert len(training) == 9  # fig2a's 3 + table2's 7 cells, one shared
    for body in training:
        assert "gpu=1" in body and "runtime=2880" in body and "mem_mb=64000" in body
    assert len(jobs["data_index"]) == 2  # one listing per split, at run time
    # the clean shards: one job per range of shards_per_job shards, none of them data_clean's
    assert not any("results/data/imagenet/" in b for b in jobs.get("data_clean", []))
    ranges = {name: bodies for name, bodies in jobs.items() if name.startswith("data_imagenet_")}
    assert sorted(ranges) == [f"data_imagenet_{s}_r00{r}" for s in ("test", "train") for r in (0, 1)]
    for name, (body,) in ranges.items():
        split, first = name.split("_")[2], 2 * int(name[-1])
        outputs = next(line for line in body.splitlines() if line.strip().startswith("output:"))
        expected = [f"results/data/imagenet/clean/{split}-{i:05d}.h5" for i in range(first, min(first + 2, 3))]
        assert outputs.split(":", 1)[1].strip().split(", ") == expected
    assert sum("imagenet/random_labels/s0/train-" in b for b in jobs["data_randomize"]) == 3


@pytest.mark.workflow
def test_range_jobs_build_the_clean_shards_and_regrouping_them_reruns_nothing(workflow):
    """The range rules really run (each its own range: a rule made in a loop must not read the
    loop variable when it runs), and shards_per_job only groups the work: changing it is a no-op."""
    write_imagenet(workflow.root / "data/imagenet", 2, N_VAL, val_layout="flat")
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    paper.update(experiments={"fig2a": paper["experiments"]["fig2a"]}, theorem1={"enabled": False})
    paper["kernel"]["rows"] = {}
    paper["datasets"]["imagenet"]["subset"] = {"train": 8, "test": N_VAL}
    paper["datasets"]["imagenet"]["stream"].update(shard_size=3, shards_per_job=2)
    targets = [f"results/data/imagenet/clean/{s}-{i:05d}.h5" for s in ("train", "test") for i in range(3)]
    workflow.run("-c1", *targets, "--configfile", workflow.write_config(paper))
    for split in ("train", "test"):
        index = imagenet.read_index(workflow.root / f"results/data/imagenet/clean/{split}-index.json")
        for i in range(3):
            arrays, attrs = read_shard(workflow.root / f"results/data/imagenet/clean/{split}-{i:05d}.h5", ["labels"])
            assert (attrs["split"], attrs["shard_index"]) == (split, i)
            assert arrays["labels"].tolist() == index["labels"][3 * i : 3 * i + 3]
    assert not any((workflow.root / "results/data/imagenet/clean/staging").iterdir())
    paper["datasets"]["imagenet"]["stream"]["shards_per_job"] = 3
    dry = workflow.run("-n", *targets, "--configfile", workflow.write_config(paper))
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_an_empty_class_folder_is_an_error_naming_it_and_both_splits_have_the_same_classes(tmp_path, capsys):
    """An empty train/<wnid>/ would be a class without images (num_classes 5 for 4 real classes):
    the index job of either split stops naming it, in one line."""
    write_imagenet(tmp_path / "folders", PER_CLASS, N_VAL, val_layout="folders")
    empty = tmp_path / "folders" / "train" / "n09999999"
    empty.mkdir()
    (empty / "README.txt").write_text("not an image")
    spec_json = canonical_json({"dataset": dataset_spec(tmp_path / "folders"), "shards": SHARDS})
    for split in ("train", "test"):
        with pytest.raises(SystemExit) as stop:
            prepare.main(["index", "--spec", spec_json, "--split", split, "--out", str(tmp_path / f"{split}.json")])
        assert stop.value.code == 2 and not (tmp_path / f"{split}.json").exists()
        assert capsys.readouterr().err == (
            f"error: {empty}: class folder without images (.jpeg, .jpg, .png); every folder of {empty.parent} is a "
            "class, so remove it or put its images back\n"
        )
    (empty / "README.txt").unlink()
    empty.rmdir()
    # a val class folder without images: the splits would disagree on the classes
    val = tmp_path / "folders" / "val" / IMAGENET_WNIDS[2]
    for image in val.iterdir():
        image.unlink()
    with pytest.raises(RethinkError, match=rf"no test images of class {IMAGENET_WNIDS[2]}, which train/ has"):
        imagenet.list_split(tmp_path / "folders", "test")
    classes, _, labels = imagenet.list_split(tmp_path / "folders", "train")
    assert classes == IMAGENET_WNIDS and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    # flat val: the devkit's ground truth must cover every class too (3 images for 4 classes here)
    write_imagenet(tmp_path / "flat", 1, 3, val_layout="flat")
    with pytest.raises(RethinkError, match=rf"{imagenet.GROUND_TRUTH}: no test images of class {IMAGENET_WNIDS[3]}"):
        imagenet.list_split(tmp_path / "flat", "test")


def test_the_listing_and_a_range_job_log_their_progress_in_lines(inet, tmp_path):
    """What a data rule's log gets (`> {log} 2>&1`): the listing of train/'s class folders, and a
    range job's shards, each a line as it starts and as it ends (more only every LOG_SECONDS)."""
    _, dataset, _, shards = inet
    spec_json = canonical_json({"dataset": dataset, "shards": SHARDS})
    index, outs = tmp_path / "train-index.json", [str(tmp_path / pathlib.Path(p).name) for p in shards["train"]]
    logs = {}
    for name, argv in (
        ("index", ["index", "--spec", spec_json, "--split", "train", "--out", str(index)]),
        ("range", ["clean", "--spec", spec_json, "--split", "train", "--shards", f"0-{len(outs) - 1}", "--index",
                   str(index), "--staging", str(tmp_path / "staging"), "--out", *outs]),
    ):  # fmt: skip
        with open(tmp_path / f"{name}.log", "w") as log:
            cli = [sys.executable, "-m", "rethink.data.prepare", *argv]
            subprocess.run(cli, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=600)
        logs[name] = (tmp_path / f"{name}.log").read_text()
        assert "\r" not in logs[name]
    lines = logs["index"].splitlines()
    assert lines[0] == "listing train 0/4 (0.0%) ?folders/s elapsed 00:00 eta ?"
    assert lines[-2].startswith("listing train 4/4 (100.0%) ") and " eta 00:00" in lines[-2]
    assert lines[-1] == f"index: {N_TRAIN} train images of inet listed in {index}"
    lines = logs["range"].splitlines()
    assert lines[0] == "shards train 0/5 (0.0%) ?shards/s elapsed 00:00 eta ?"
    assert lines[-2].startswith("shards train 5/5 (100.0%) ") and " eta 00:00" in lines[-2]
    assert lines[-1].startswith("clean: wrote train shards 0-4 (5 files) in ")
    assert [pathlib.Path(p).read_bytes() for p in outs] == [pathlib.Path(p).read_bytes() for p in shards["train"]]
