"""What the commands write, when they cannot, and when they would overwrite.

- A run dir or output folder that cannot be written (read-only) is one ``error:`` line and
  exit 2 for evaluate, adapt, train --resume and compare, and nothing in it changes.
- A run that fails during set-up removes what it created, so the same ``--run-dir`` works
  once the problem is fixed (train and baselines).
- One overwrite rule: an existing output (``eval/<name>``, ``adapt/<name>``, a comparison)
  is replaced only with ``--force``; without it the command stops before any work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

import hyperrl.train as train_mod
from hyperrl.baselines import main as baselines_main
from hyperrl.compare import main as compare_main
from hyperrl.errors import HyperrlError
from hyperrl.evaluate import main as evaluate_main
from hyperrl.fileio import OutputError, atomic_write_text, publish_dir

TINY = [
    "env.num_envs=16", "ppo.num_steps=16", "eval.episodes=1", "progress=false", "ppo.update_epochs=1",
    "ppo.num_minibatches=2", "model.hidden_sizes=[8,8]", "model.embed_sizes=[8,8]",
    "model.critic_hidden_sizes=[8,8]", "stop_at_return=null", "histogram_interval_evals=0",
]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return helpers.train_tiny(tmp_path_factory.mktemp("outputs") / "run", "cartpole-actuator", 512, TINY, 512)


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------
# Read-only folders
# --------------------------------------------------------------------------------------
def _set_writable(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(p, (mode | stat.S_IWUSR) if writable else (mode & ~bits))


# Runs each command as ``python -m`` does (runpy, ``__main__``), in one process so the
# interpreter starts once; prints a JSON list of [exit code, stderr] per command.
_COMMANDS_SCRIPT = """
import json, os, runpy, sys, tempfile
results = []
for module, *args in json.loads(sys.argv[1]):
    sys.argv = [module, *args]
    saved = os.dup(2)
    with tempfile.TemporaryFile() as err:  # everything written to fd 2, C libraries' output too
        os.dup2(err.fileno(), 2)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append([code, err.read().decode()])
print(json.dumps(results))
"""


def run_read_only(folders: list[Path], commands: list[list]) -> list[tuple[int, str]]:
    """Each of ``commands`` (``[module, *args]``, run as ``python -m``) with ``folders``
    read-only -> ``(exit code, stderr)`` per command: permission bits for a normal user; for
    root, who ignores them, a private mount namespace where each folder is bind-mounted
    read-only (skipped where that is not allowed)."""
    cmd = [sys.executable, "-c", _COMMANDS_SCRIPT, json.dumps([[m, *map(str, a)] for m, *a in commands])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if os.geteuid() != 0:
        for folder in folders:
            _set_writable(folder, False)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        finally:
            for folder in folders:
                _set_writable(folder, True)
    else:
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
            pytest.skip("running as root without mount namespaces: cannot make a read-only folder")
        script = ('for f in "$@"; do [ "$f" = -- ] && break; mount --bind "$f" "$f" && mount -o remount,bind,ro "$f" '
                  '|| exit 1; done; while [ "$1" != -- ]; do shift; done; shift; exec "$@"')
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *map(str, folders), "--", *cmd],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [(code, err) for code, err in json.loads(proc.stdout.splitlines()[-1])]


def assert_one_error_line(result: tuple[int, str], needle: str) -> None:
    code, stderr = result
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert needle in lines[0], lines[0]


def test_read_only_run_dir_is_one_error_line_and_left_untouched(run, tmp_path):
    copy = tmp_path / "ro-run"
    shutil.copytree(run, copy)
    before = tree_hash(copy)
    out = tmp_path / "ro-out"
    out.mkdir()
    evaluate, adapt, resume, compare = run_read_only([copy, out], [
        ["hyperrl.evaluate", copy, "--episodes", 1],
        ["hyperrl.adapt", copy, "--values", "force_mag=-10", "--episodes", 1, "--no-references"],
        ["hyperrl.train", "--resume", copy, "--total-steps", 1024, "--device", "cpu"],
        ["hyperrl.compare", copy, "--out", out / "cmp"],
    ])
    assert_one_error_line(evaluate, f"cannot write to {copy / 'eval'}")
    assert_one_error_line(adapt, f"cannot write to {copy / 'adapt'}")
    assert_one_error_line(resume, f"cannot write to {copy}")
    assert tree_hash(copy) == before
    assert_one_error_line(compare, f"cannot write to {out}")
    assert not any(out.iterdir())


def test_a_failed_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full_disk(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError, match=r"cannot write .*metrics\.json: No space left on device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --------------------------------------------------------------------------------------
# A run that fails during set-up leaves nothing behind
# --------------------------------------------------------------------------------------
class _SetupFailure(HyperrlError):
    pass


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "empty-dir"])
def test_train_failing_in_setup_removes_what_it_created(tmp_path, capsys, monkeypatch, existing):
    run_dir = tmp_path / "run"
    if existing:
        run_dir.mkdir()

    def broken(*_, **__):
        raise _SetupFailure("the simulator cannot start")

    monkeypatch.setattr(train_mod, "make_vec_env", broken)
    args = ["--env-family", "cartpole-mass", "--total-steps", 256, "--device", "cpu", "--run-dir", run_dir]
    for item in TINY:
        args += ["--set", item]
    line = helpers.expect_cli_error(capsys, train_mod.main, args)
    assert "the simulator cannot start" in line
    assert run_dir.is_dir() == existing and (not existing or not any(run_dir.iterdir()))
    monkeypatch.undo()
    assert train_mod.main([str(a) for a in args]) == 0  # the same --run-dir, once fixed
    assert (run_dir / "metrics.json").is_file()


def test_train_failing_after_a_checkpoint_keeps_it(tmp_path, capsys, monkeypatch):
    """A crash after the first checkpoint keeps the run (it can be resumed)."""
    from hyperrl.checkpoint import CheckpointManager

    original = CheckpointManager.save_latest

    def save_then_fail(self, payload):
        original(self, payload)
        raise _SetupFailure("disk trouble after the checkpoint")

    monkeypatch.setattr(CheckpointManager, "save_latest", save_then_fail)
    run_dir = tmp_path / "run"
    args = ["--env-family", "cartpole-mass", "--total-steps", 512, "--device", "cpu", "--run-dir", run_dir,
            "--set", "eval.interval_steps=256"]
    for item in TINY:
        args += ["--set", item]
    helpers.expect_cli_error(capsys, train_mod.main, args)
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "config.yaml").is_file()


def test_baselines_failing_in_setup_removes_what_it_created(tmp_path, capsys, monkeypatch):
    import hyperrl.baselines as baselines_mod

    def broken(*_, **__):
        raise _SetupFailure("SB3 cannot start")

    monkeypatch.setattr(baselines_mod, "train_shared", broken)
    run_dir = tmp_path / "dr"
    args = ["--env-family", "cartpole-mass", "--method", "dr", "--total-steps", 64, "--run-dir", run_dir]
    assert "SB3 cannot start" in helpers.expect_cli_error(capsys, baselines_main, args)
    assert not run_dir.exists()


# --------------------------------------------------------------------------------------
# One overwrite rule
# --------------------------------------------------------------------------------------
def test_evaluate_refuses_to_replace_an_output_without_force(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = [copy, "--split", "interpolation", "--episodes", 1, "--backend", "batched", "--name", "mine"]
    capsys.readouterr()
    assert evaluate_main([str(a) for a in args]) == 0
    first = tree_hash(copy)
    line = helpers.expect_cli_error(capsys, evaluate_main, args)
    assert f"{copy / 'eval' / 'mine'} already exists; pick another --name or pass --force" in line
    assert tree_hash(copy) == first
    assert evaluate_main([str(a) for a in [*args, "--episodes", 2, "--force"]]) == 0
    results = json.loads((copy / "eval" / "mine" / "results.json").read_text())
    assert results["settings"]["episodes"] == 2
    assert sorted(p.name for p in (copy / "eval").iterdir()) == ["mine"]  # no temporary folders left


def test_compare_refuses_to_replace_an_output_without_force(run, tmp_path, capsys):
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert compare_main([str(run), "--out", str(out)]) == 0
    first = tree_hash(out)
    line = helpers.expect_cli_error(capsys, compare_main, [run, "--out", out])
    assert f"{out} already exists" in line and "--force" in line
    assert tree_hash(out) == first
    assert compare_main([str(run), "--out", str(out), "--force", "--bootstrap-reps", "10"]) == 0
    assert json.loads((out / "comparison.json").read_text())["bootstrap"]["reps"] == 10
    # --force replaces a comparison, never a folder of the user's own files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = helpers.expect_cli_error(capsys, compare_main, [run, "--out", mine, "--force"])
    assert "holds other files than a comparison" in line and (mine / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare_main([str(run), "--out", str(empty)]) == 0  # an empty folder is free to fill
    assert (empty / "comparison.md").is_file()


def test_publish_dir_leaves_the_old_folder_when_building_fails(tmp_path):
    out = tmp_path / "out"
    publish_dir(out, lambda d: (d / "a.txt").write_text("first"), force=False)

    def failing(d: Path) -> None:
        (d / "a.txt").write_text("second")
        raise RuntimeError("plotting failed")

    with pytest.raises(RuntimeError, match="plotting failed"):
        publish_dir(out, failing, force=True)
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OutputError, match="already exists"):
        publish_dir(out, lambda d: None, force=False)
