"""The ``analysis`` extra of setup.cfg and the notebook and worker images pin the same analysis stack.

A notebook that runs the example analysis with ``casa_hub[analysis]`` and the Dask workers built
from ``images/worker`` must run the same versions: every package that the extra and an image's
requirements file both name has the same ``==`` pin, and the packages the analysis imports are
pinned in all three. The ``test`` extra carries the analysis stack too, and this environment has it.
"""

from __future__ import annotations

from configparser import ConfigParser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: what the example analysis and its notebook import or read through
STACK = ("coffea", "numpy", "awkward", "uproot", "hist", "matplotlib", "dask", "distributed",
         "xrootd", "fsspec-xrootd")


def extra(name: str) -> list[Requirement]:
    cfg = ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [Requirement(line) for line in cfg["options.extras_require"][name].splitlines() if line.strip()]


def pins(requirements: list[Requirement], where: str) -> dict[str, str]:
    """name -> version; every requirement must be ``name==version``."""
    out: dict[str, str] = {}
    for req in requirements:
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{where}: {req} is not pinned with =="
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def image_pins(image: str) -> dict[str, str]:
    path = ROOT / "images" / image / "requirements.txt"
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return pins([Requirement(line) for line in lines if line], str(path))


ANALYSIS = pins(extra("analysis"), "setup.cfg [analysis]")


@pytest.mark.parametrize("image", ["notebook", "worker"])
def test_shared_packages_have_the_same_pins(image):
    theirs = image_pins(image)
    shared = sorted(set(ANALYSIS) & set(theirs))
    assert set(STACK) <= set(shared), f"images/{image} lacks {sorted(set(STACK) - set(theirs))}"
    differ = {name: (ANALYSIS[name], theirs[name]) for name in shared if ANALYSIS[name] != theirs[name]}
    assert not differ, f"[analysis] vs images/{image}/requirements.txt: {differ}"


def test_the_extra_holds_the_stack_and_the_mlflow_client():
    assert set(STACK) | {"mlflow-skinny"} <= set(ANALYSIS)
    assert ANALYSIS["mlflow-skinny"] == image_pins("notebook")["mlflow-skinny"]


def test_the_test_extra_installs_the_analysis_stack():
    test = {canonicalize_name(r.name): r for r in extra("test")}
    for name, pinned in ANALYSIS.items():
        assert name in test, f"the test extra lacks {name}"
        assert test[name].specifier.contains(pinned), f"test extra: {test[name]} excludes {name}=={pinned}"


@pytest.mark.parametrize("name", sorted(ANALYSIS))
def test_this_environment_runs_the_pinned_versions(name):
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    assert installed == ANALYSIS[name], f"{name} {installed} is installed, the extra pins {ANALYSIS[name]}"
