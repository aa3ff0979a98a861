"""The plan (rethink.plan): what a config runs, printed without Snakemake; code hashes from real
imports (rethink.codehash); a user's model checked without importing it."""

import json
import os
import subprocess
import sys

import pytest

from rethink import codehash, plan
from rethink import config as rconfig
from rethink.config import ConfigError
from rethink.train import cell as cells

from conftest import REPO, SCHEMA, tiny_config

EXPERIMENTS = {"e": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"], "corruption_levels": [0, 1]}]}}


def built(config):
    return plan.Plan(rconfig.validate(json.loads(json.dumps(config)), SCHEMA))


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rethink.plan", *args], cwd=REPO, capture_output=True, text=True, env=env
    )


def test_the_cli_prints_the_paper_plan_as_a_table_and_as_json_without_torch(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('torch imported while planning')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO / "src")]))
    table = run_cli("--configfile", "config/paper.yaml", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("config/paper.yaml: 55 cells, 55 training jobs, ")
    assert "| fig1b | 33 | alexnet, inception, mlp_1x512 | none |" in table.stdout
    assert "| 20 x train | cifar10 | inception | 1 | 240 | 16000 | 1 | 1 | python |" in table.stdout
    described = json.loads(run_cli("--configfile", "config/paper.yaml", "--json", env=env).stdout)
    assert len(described["cells"]) == 55 and len(described["jobs"]["train"]) == 55
    job = next(j for j in described["jobs"]["train"] if j["cells"] == ["cifar10/alexnet/none/true_labels/s0"])
    alexnet = rconfig.load(REPO / "config/paper.yaml")["architectures"]["alexnet"]
    assert (job["rule"], job["runtime_minutes"], job["mem_mb"], job["gpu"], job["launcher"]) == (
        "train",
        alexnet["runtime_minutes"],
        alexnet["mem_mb"],
        1,
        "python",
    )
    assert described["jobs"]["reports"]["tables"] == ["table1", "table3", "table4"]
    assert set(described["code"]) == set(plan.ENTRIES)


def test_a_bad_config_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(tiny_config({"e": {"dataset": "nope", "grid": [{"architectures": ["mlp"]}]}})))
    proc = run_cli("--configfile", str(path))
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "error: config key experiments.e.dataset: 'nope' is not a configured dataset (configured: synth)\n"
    )


def test_packs_and_resources_come_from_the_architecture():
    config = tiny_config(EXPERIMENTS)
    config["architectures"]["alexnet"].update(gpus=2, mem_mb=900, hparams={"device": "cpu"})
    single = built(config)
    assert [p.rule for p in single.packs] == ["train"] * 4 and not single.packed
    alexnet = single.pack_of("synth/alexnet/none/true_labels/s0")
    assert (single.runtime(alexnet, attempt=2), single.mem_mb(alexnet), single.cpus(alexnet)) == (10, 900, 2)
    assert single.launcher(alexnet) == "exec torchrun --standalone --nnodes=1 --nproc_per_node=2"
    assert single.gpus(alexnet) == 0  # CPU ranks
    mlp = single.pack_of("synth/mlp/none/true_labels/s0")
    assert single.launcher(mlp) == "exec python" and single.cpus(mlp) == 1
    with pytest.raises(Exception, match="synth/mlp/none/true_labels/s9 is not a cell of this config"):
        single.pack_of("synth/mlp/none/true_labels/s9")
    config["architectures"]["alexnet"]["gpus"] = 1
    config["compute"] = {"pack": 3}
    packed = built(config)
    assert packed.packed and [(p.rule, len(p.ids)) for p in packed.packs] == [
        ("train_synth_alexnet_p000", 2),
        ("train_synth_mlp_p000", 2),
    ]


def test_a_compiled_step_with_packs_of_several_cells_is_a_config_error():
    config = tiny_config(EXPERIMENTS)
    config["compute"] = {"compile": "reduce-overhead", "pack": 2}
    with pytest.raises(ConfigError, match=r"compute.compile: 'reduce-overhead' trains a pack of one cell, but "
                       r"compute.pack is 2; set compute.pack: 1 or compute.compile: off"):  # fmt: skip
        built(config)
    config["compute"] = {"compile": "reduce-overhead", "pack": 1}
    assert built(config).compile_mode() == "reduce-overhead"


def test_a_cell_key_that_summary_json_would_overwrite_is_refused():
    spec = built(tiny_config(EXPERIMENTS)).cells["synth/mlp/none/true_labels/s0"][1]
    assert cells.validate(spec) is spec
    for key in ("final_train_avg_loss", "final_train_avg_acc", "train_avg_acc_global", "wall_s"):
        with pytest.raises(Exception, match=f"'{key}' is reserved for summary.json"):
            cells.validate(dict(spec, **{key: 1}))
    results = dict.fromkeys(cells.RESULT_KEYS, 0)
    assert list(cells.summary(spec, **results)) == [*spec, *cells.RESULT_KEYS]
    with pytest.raises(Exception, match=r"undeclared \['extra'\]"):
        cells.summary(spec, **results, extra=1)


def test_a_users_model_is_found_and_checked_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "mine"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the package was imported')\n")
    (package / "net.py").write_text(
        "import torch\nfrom .layers import block\n\ndef build(shape, classes, **kw):\n    pass\n"
    )
    (package / "layers.py").write_text("def block():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    config = tiny_config(EXPERIMENTS)
    config["architectures"]["mlp"]["model"] = "mine.net:build"
    ours = built(config)
    spec = ours.cells["synth/mlp/none/true_labels/s0"][1]
    assert spec["arch"] == "mine.net:build" and ours.models["mlp"] == "mine.net"
    assert ours.arch_code["mlp"] != ours.code["train"] == ours.arch_code["alexnet"]
    assert set(codehash.files("mine.net")) == {package / "__init__.py", package / "net.py", package / "layers.py"}
    config["architectures"]["mlp"]["model"] = "mine.net:make"
    with pytest.raises(
        ConfigError, match=r"config key architectures\.mlp\.model: 'mine\.net:make': .*net\.py defines no make"
    ):
        built(config)
    config["architectures"]["mlp"]["model"] = "mine.other:build"
    with pytest.raises(
        ConfigError, match=r"config key architectures\.mlp\.model: 'mine\.other:build': there is no module"
    ):
        built(config)


def test_a_code_hash_reads_the_code_not_its_comments_or_blank_lines(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "mod.py"
    text = '"""Doc."""\n\nimport pkg.other\n\n\ndef f():\n    return "#1"  # the answer\n'
    module.write_text(text)
    (package / "other.py").write_text("X = 1\n")
    (package / "unused.py").write_text("Y = 1\n")
    monkeypatch.chdir(tmp_path)  # the search path starts with the working directory, as for `python -m`
    digest = lambda: codehash.digest("pkg.mod")  # noqa: E731
    first = digest()
    assert set(codehash.files("pkg.mod")) == {package / "__init__.py", module, package / "other.py"}
    module.write_text(text.replace("# the answer", "# another comment\n\n# and more"))
    assert digest() == first
    (package / "unused.py").write_text("Y = 2\n")
    assert digest() == first
    module.write_text(text.replace('"#1"', '"#2"'))  # a '#' inside a string is code
    assert digest() != first
    module.write_text(text.replace("Doc.", "Docs."))
    assert digest() != first
    module.write_text(text)
    (package / "other.py").write_text("X = 2\n")
    assert digest() != first
