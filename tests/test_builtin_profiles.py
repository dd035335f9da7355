"""The built-in profiles have one home, the top-level ``profiles/``, and load by name from a checkout,
an editable install and an installed wheel alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from mtcolor_batch.core.config import NOT_RUN_PROFILES, builtin_dir, builtin_profiles, load_profile
from mtcolor_batch.train.config import load_train_config
from mtcolor_batch.train.dataset_config import load_dataset_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"


def _run_profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml") if p.name not in NOT_RUN_PROFILES)


def test_the_checkout_reads_the_top_level_profiles_folder() -> None:
    assert Path(str(builtin_dir())).resolve() == PROFILES.resolve()
    assert not (ROOT / "mtcolor_batch" / "profiles").exists()  # no second copy in git


def test_every_run_profile_in_the_folder_is_built_in_and_loads_by_name() -> None:
    # Before: dataset.yaml (the dataset builder's defaults) was listed as a run profile and failed to load.
    names = builtin_profiles()
    assert names == _run_profile_names()
    assert {"default", "paper"} <= set(names)
    for name in names:
        assert load_profile(name).name == name


def test_the_training_and_dataset_defaults_load_from_the_same_folder() -> None:
    assert load_train_config().batch_size > 0
    load_dataset_config()


# -- the wheel and the editable install, each in a fresh virtual environment ---------------------

CHECK = """
import json
import mtcolor_batch
from mtcolor_batch.core.config import builtin_dir, builtin_profiles, load_profile
from mtcolor_batch.train.config import load_train_config
from mtcolor_batch.train.dataset_config import load_dataset_config
load_train_config(); load_dataset_config()
names = builtin_profiles()
print(json.dumps({"package": mtcolor_batch.__file__, "folder": str(builtin_dir()),
                  "profiles": names, "loaded": [load_profile(n).name for n in names]}))
"""


def _venv_reaching_this_env(where: Path) -> Path:
    """A venv without pip whose .pth puts this environment's site-packages after its own, so the
    dependencies (and pip) are shared but this environment's own install of the package is not seen:
    a path line in a .pth does not run that folder's .pth files (the editable finder)."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _source_copy(dest: Path) -> Path:
    """What a build reads, copied so that building never writes into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mtcolor_batch", "profiles"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def _check(python: Path, cwd: Path, scans: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", CHECK], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    # --profile NAME through the installed console script (a dry run needs no model and writes nothing)
    cli = python.parent / "mtcolor-batch"
    run = subprocess.run(
        [cli, "run", str(scans), "--profile", "paper", "--dry-run", "--out", str(cwd / "out")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return found


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy2(ROOT / "examples" / "scans" / "portrait.png", folder / "portrait.png")
    return folder


@pytest.mark.slow
def test_an_installed_wheel_loads_every_profile_by_name(tmp_path: Path, scans: Path) -> None:
    source = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source], check=True)
    (wheel,) = dist.glob("*.whl")
    python = _venv_reaching_this_env(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], check=True)
    shutil.rmtree(source)  # the wheel must carry the profiles itself

    found = _check(python, tmp_path, scans)
    assert str(found["package"]).startswith(str(tmp_path / "venv"))
    assert found["folder"] == str(Path(str(found["package"])).parent / "profiles")
    assert found["profiles"] == found["loaded"] == _run_profile_names()


@pytest.mark.slow
def test_an_editable_install_loads_every_profile_by_name(tmp_path: Path, scans: Path) -> None:
    source = _source_copy(tmp_path / "src")
    python = _venv_reaching_this_env(tmp_path / "venv")
    install = ["install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", source]
    subprocess.run([python, "-m", "pip", *install], check=True)
    found = _check(python, tmp_path, scans)
    assert str(found["package"]).startswith(str(source))
    assert Path(str(found["folder"])).resolve() == (source / "profiles").resolve()
    assert found["profiles"] == found["loaded"] == _run_profile_names()
