"""Install surface: pyproject and environment.yml pin the same things; torchvision imports."""

import subprocess
import sys
import tomllib

import yaml

from conftest import REPO


def test_environment_yml_pins_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]).union(*project["optional-dependencies"].values())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "torch==2.13.0" in wanted and "torchvision==0.28.*" in wanted


def test_torchvision_imports_through_the_guard():
    import torch

    from rethink.torchvision_guard import EXTENSION_LOADED, torchvision

    assert torchvision.__version__.startswith("0.28")
    assert hasattr(torch.ops.torchvision, "nms")  # the schema exists either way
    assert torchvision.datasets.CIFAR10 and torchvision.models.inception_v3
    if not EXTENSION_LOADED:
        # Without the guard, this very environment cannot import torchvision at all.
        plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
        assert plain.returncode != 0 and "torchvision::nms does not exist" in plain.stderr


def test_guard_is_idempotent():
    from rethink import torchvision_guard

    before = torchvision_guard._LIBRARY
    # a second call neither redefines the schemas (which would raise) nor changes the verdict
    assert torchvision_guard.ensure_loadable() == torchvision_guard.EXTENSION_LOADED
    assert torchvision_guard._LIBRARY is before
