"""Downloads (datasets.<name>.download: true) happen once per dataset, in the rule data_download
before any job reads the raw files, never in a job: rethink.data.download fetches through
torchvision's own downloader, exercised here from a mirror on loopback (no network)."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import shutil
import threading

import pytest

from rethink import paths
from rethink.data import download, sources
from rethink.errors import RethinkError

from conftest import FASHION_MNIST_ROOT, needs_fashion_mnist, tiny_config

pytestmark = needs_fashion_mnist
RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def md5(path):
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def mirror(folder):
    """An HTTP server on loopback serving `folder`: its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_the_download_fetches_through_torchvision_and_its_checksums(tmp_path, monkeypatch, capsys):
    """torchvision's FashionMNIST downloader, pointed at a mirror of the Debian package's archives
    (with their md5s: they are recompressed, so not the md5s torchvision ships), fetches and
    unpacks them into root; the files then read, verified against the released md5s."""
    from rethink.torchvision_guard import torchvision

    fashion = torchvision.datasets.FashionMNIST
    monkeypatch.setattr(fashion, "resources", [(f"{n}.gz", md5(FASHION_MNIST_ROOT / f"{n}.gz")) for n in RAW])
    root, record = tmp_path / "root", tmp_path / "downloaded.json"
    with mirror(FASHION_MNIST_ROOT) as url:
        monkeypatch.setattr(fashion, "mirrors", [url])
        assert download.main(["--source", "fashion_mnist", "--root", str(root), "--out", str(record)]) == 0
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*RAW, *(f"{n}.gz" for n in RAW)])
    assert json.loads(record.read_text())["files"]["test"] == [str(raw / RAW[2]), str(raw / RAW[3])]
    spec = {"name": "f", "source": "fashion_mnist", "root": str(root), "verify": True, "subset": {"test": 100}}
    images, labels, _ = sources.load_split(spec, "test")  # through the released md5s
    assert images.shape == (100, 1, 28, 28) and len(labels) == 100
    # a second run keeps what is there (torchvision checks it), fetching nothing
    monkeypatch.setattr(fashion, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    assert download.main(["--source", "fashion_mnist", "--root", str(root)]) == 0
    assert "fashion_mnist: raw files in" in capsys.readouterr().out


def test_a_job_that_finds_the_raw_files_missing_names_them_and_the_command_that_fetches_them(tmp_path, monkeypatch):
    from rethink.torchvision_guard import torchvision

    def refuse(*args, **kwargs):
        raise AssertionError("a job downloaded")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    spec = {"name": "cifar", "source": "cifar10", "root": str(tmp_path / "data"), "download": True}
    with pytest.raises(RethinkError) as info:
        sources.load_split(spec, "train")
    assert str(info.value) == (
        f"dataset 'cifar' (source cifar10): the train files ['data_batch_1', 'data_batch_2', 'data_batch_3', "
        f"'data_batch_4', 'data_batch_5'] were not found in {tmp_path / 'data'}/cifar-10-batches-py; fetch them "
        f"where there is internet: python -m rethink.data.download --source cifar10 --root {tmp_path / 'data'}."
    )
    sources.check_available(spec)  # before the run: the workflow will fetch them, no error


def download_config(root):
    config = tiny_config({"e": {"dataset": "fm", "grid": [{"architectures": ["mlp"], "noises": ["random_labels"]}]}})
    config["datasets"]["fm"] = {"source": "fashion_mnist", "root": str(root), "download": True,
                                "subset": {"train": 64, "test": 32}}  # fmt: skip
    config["datasets"]["fm2"] = dict(config["datasets"]["fm"], subset={"train": 32, "test": 32})  # same root
    config["experiments"]["f"] = {"dataset": "fm2", "grid": [{"architectures": ["mlp"]}]}
    config["training"]["crop_size"] = 28
    return config


def test_the_workflow_downloads_once_per_dataset_before_any_job_reads_it(workflow, tmp_path):
    """The dry run: one data_download job per dataset, which every clean shard of it waits for.
    The run: the raw files placed where torchvision keeps them (it then fetches nothing: no network
    here), the download rule records them, the shards are built from them."""
    root = tmp_path / "raw"
    configfile = workflow.write_config(download_config(root))
    dry = workflow.run("-n", "--configfile", configfile).stdout
    downloads = [block for block in dry.split("\nrule ")[1:] if block.startswith("data_download:")]
    assert sorted(block.split("output: ")[1].split()[0] for block in downloads) == [
        paths.DOWNLOADED.format(dataset="fm"),
        paths.DOWNLOADED.format(dataset="fm2"),
    ]
    cleans = [block for block in dry.split("\nrule ")[1:] if block.startswith("data_clean:")]
    assert len(cleans) == 4 and all("/downloaded.json" in block.split("output:")[0] for block in cleans)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW:
        with gzip.open(FASHION_MNIST_ROOT / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    workflow.run("--configfile", configfile, "-c2", "data_shards")
    record = json.loads((workflow.root / paths.DOWNLOADED.format(dataset="fm")).read_text())
    assert record["files"]["train"] == [str(raw / RAW[0]), str(raw / RAW[1])]
    assert (workflow.root / "results/data/fm/random_labels/s0/train-00000.h5").is_file()
    log = workflow.root / "results/logs/data/fm/download.log"
    assert "fashion_mnist: raw files in" in log.read_text()
