"""The built distributions carry the built-in families and configs and work installed.

The sdist and a wheel are built from a copy of the repo with the running interpreter
(no build isolation, no index: no network), a second wheel from that sdist; the repo's wheel
is installed with ``pip install --target`` and run from a folder outside the repo with only
that install on PYTHONPATH, so nothing can be read from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyperrl.config import to_dict
from hyperrl.train_config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
FAMILIES = sorted(p.stem for p in (REPO / "envs").glob("*.yaml"))
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))

# The tiny run's flags and --set keys: every other key of configs/cartpole-mass.yaml must
# reach the run's config.yaml unchanged.
TINY_SETTINGS = {"env.num_envs": 64, "eval.interval_steps": 2048, "eval.episodes": 1, "progress": False}
TINY_FLAGS = {"total_steps": 2048, "device": "cpu"}


@dataclass(frozen=True)
class Built:
    sdist: Path
    repo_wheel: Path
    sdist_wheel: Path
    site: Path  # the repo's wheel, installed
    outside: Path  # a working folder outside the repo


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    _run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--no-cache-dir"], cwd, env)


def _one(folder: Path, pattern: str) -> Path:
    found = list(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("packaging")
    # A copy, because setuptools writes build/ and *.egg-info into the folder it builds, and a
    # stale build/lib would put files deleted from the repo into the wheel.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "*.egg-info", "build", "dist", "runs", "out"))
    # setuptools' PEP 517 hook is what `python -m build --sdist --no-isolation` calls; called
    # directly it needs no package beyond setuptools.
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
          str(tmp / "sdist")], src)
    sdist = _one(tmp / "sdist", "*.tar.gz")
    _pip("wheel", "--no-build-isolation", "-w", str(tmp / "repo-wheel"), str(src), cwd=tmp)
    _pip("wheel", "--no-build-isolation", "-w", str(tmp / "sdist-wheel"), str(sdist), cwd=tmp)
    repo_wheel = _one(tmp / "repo-wheel", "*.whl")
    _pip("install", "--target", str(tmp / "site"), str(repo_wheel), cwd=tmp)
    outside = tmp / "outside"
    outside.mkdir()
    return Built(sdist, repo_wheel, _one(tmp / "sdist-wheel", "*.whl"), tmp / "site", outside)


def _installed(built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed wheel's Python, outside the repo, with only the install importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYPERRL_ENVS_DIR")}
    env.update(PYTHONPATH=str(built.site), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return _run([sys.executable, *args], built.outside, env)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_sdist_carries_the_yaml_folders(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}  # without <name>-<version>/
    assert {f"envs/{f}.yaml" for f in FAMILIES} <= names
    assert {f"configs/{c}" for c in CONFIGS} <= names


@pytest.mark.parametrize("which", ["repo_wheel", "sdist_wheel"])
def test_wheel_carries_the_yaml_folders(built: Built, which: str) -> None:
    with zipfile.ZipFile(getattr(built, which)) as whl:
        names = set(whl.namelist())
    assert {f"hyperrl/envs/{f}.yaml" for f in FAMILIES} <= names
    assert {f"hyperrl/configs/{c}" for c in CONFIGS} <= names


# One process of the installed wheel, outside the repo, does what the tests below check (a
# Python start with torch costs seconds): first, with hyperrl never imported, a family
# through Gymnasium's module prefix (Gymnasium 1.x loads no entry-point plugins), whose import
# registers every built-in family; then the built-ins; then `hyperrl.train --help-config`
# and a tiny `hyperrl.train` run, through the command's own main.
_INSTALLED_SCRIPT = """
import contextlib, io, json, sys
import gymnasium as gym
env = gym.make('hyperrl:hyperrl/cartpole-mass-v0', masspole=0.3)
obs, info = env.reset(seed=0)
venv = gym.make_vec('hyperrl/acrobot-links-v0', num_envs=2, vectorization_mode='vector_entry_point')
ids = sorted(k for k in gym.registry if k.startswith('hyperrl/') and k.endswith('-v0'))
import hyperrl
from hyperrl.train import builtin_configs_dir, main
fam = hyperrl.load_family('cartpole-mass')
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    assert main(['--help-config']) == 0
train_code = main(sys.argv[1:])
print(json.dumps({'file': hyperrl.__file__, 'params': info['params'], 'vector': type(venv).__name__, 'ids': ids,
                  'families': hyperrl.list_families(), 'loaded': fam.name,
                  'configs': sorted(p.name for p in builtin_configs_dir().glob('*.yaml')),
                  'help_config': help_text.getvalue(), 'train_code': train_code}))
"""


@pytest.fixture(scope="module")
def installed(built: Built) -> dict[str, Any]:
    """What the installed wheel's process reported (see _INSTALLED_SCRIPT); its tiny run is
    ``built.outside / "RUN"``."""
    args = ["--env-family", "cartpole-mass", "--run-dir", "RUN"]
    for key, value in TINY_FLAGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    for key, value in TINY_SETTINGS.items():
        args += ["--set", f"{key}={str(value).lower()}"]
    return json.loads(_installed(built, "-c", _INSTALLED_SCRIPT, *args).stdout.splitlines()[-1])


def test_installed_wheel_finds_the_builtins(built: Built, installed: dict[str, Any]) -> None:
    assert Path(installed["file"]).resolve().is_relative_to(built.site.resolve())
    assert installed["families"] == FAMILIES
    assert installed["loaded"] == "cartpole-mass"
    assert installed["configs"] == CONFIGS


def test_installed_wheel_trains_with_the_family_config(built: Built, installed: dict[str, Any]) -> None:
    assert all(key in installed["help_config"] for key in TINY_SETTINGS)
    assert installed["train_code"] == 0
    run = built.outside / "RUN"
    assert (run / "metrics.json").is_file()
    used = _flatten(yaml.safe_load((run / "config.yaml").read_text()))
    family_config = _flatten(yaml.safe_load((REPO / "configs" / "cartpole-mass.yaml").read_text()))
    kept = {k: v for k, v in family_config.items() if k not in TINY_SETTINGS and k not in TINY_FLAGS}
    assert {k: used[k] for k in kept} == kept
    # Only meaningful while the family's config departs from the defaults somewhere.
    defaults = _flatten(to_dict(TrainConfig()))
    assert any(defaults[k] != v for k, v in kept.items())


def test_installed_wheel_registers_every_family_with_gymnasium(built: Built, installed: dict[str, Any]) -> None:
    """Outside the repo, a process that never imported hyperrl itself reached a family through
    Gymnasium's module prefix, and the import it triggered registered every built-in family."""
    assert Path(installed["file"]).resolve().is_relative_to(built.site.resolve())
    assert installed["params"] == {"masspole": 0.3} and installed["vector"] == "FamilyVectorEnv"
    assert installed["ids"] == sorted(f"hyperrl/{f}-v0" for f in FAMILIES)
