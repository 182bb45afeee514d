"""One writer per run dir (``hyperrl.runlock``), tested with real processes: a trainer, an
evaluation or an adaptation is refused with one line naming the holder while another process
trains into the run dir; readers never are; a lock left by a killed process does not block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest

import hyperrl
from hyperrl.adapt.cli import main as adapt_main
from hyperrl.checkpoint import load_checkpoint
from hyperrl.evaluate import main as evaluate_main
from hyperrl.runlock import LOCK_NAME, RunLockedError, holder, run_lock
from hyperrl.train import main as train_main

REPO = Path(__file__).resolve().parent.parent
TINY = ["env.num_envs=16", "ppo.num_steps=16", "eval.episodes=1", "progress=false", "ppo.update_epochs=1",
        "ppo.num_minibatches=2", "model.hidden_sizes=[8,8]", "model.embed_sizes=[8,8]",
        "model.critic_hidden_sizes=[8,8]", "histogram_interval_evals=0", "stop_at_return=null"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return helpers.train_tiny(tmp_path_factory.mktemp("lock") / "run", "cartpole-mass", 512, TINY, 256)


def hold(run_dir: Path, exclusive: bool = True) -> subprocess.Popen:
    """Another process that takes the run dir's lock and sleeps until killed."""
    code = ("import sys, time\nfrom hyperrl.runlock import run_lock\n"
            f"with run_lock({str(run_dir)!r}, exclusive={exclusive}):\n"
            "    print('locked', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_trainer_is_refused_naming_the_holder_then_takes_over_once_it_is_killed(finished_run, tmp_path,
                                                                                         capsys):
    run = tmp_path / "run"
    run.mkdir()
    for p in finished_run.iterdir():  # a copy whose lock is free
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    (run / "checkpoints").mkdir()
    for p in (finished_run / "checkpoints").iterdir():
        (run / "checkpoints" / p.name).write_bytes(p.read_bytes())
    # a real trainer (the CLI, in its own process) training for long into the run dir
    trainer = subprocess.Popen([sys.executable, "-m", "hyperrl.train", "--resume", str(run), "--total-steps",
                                str(10**7), "--device", "cpu"], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (holder(run) or {}).get("pid") != trainer.pid:
            assert trainer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        info = holder(run)
        assert "hyperrl.train --resume" in info["command"] and info["mode"] == "exclusive"
        # a second trainer (this process, through the CLI's entry point): exit 2, one line
        before = {p.name for p in run.iterdir()}
        line = helpers.expect_cli_error(capsys, train_main, ["--resume", run, "--total-steps", 1024])
        assert line.startswith(f"error: cannot resume training in run dir {run}: pid {trainer.pid} on host ")
        assert "python -m hyperrl.train --resume" in line and "trains into it" in line
        assert {p.name for p in run.iterdir()} == before
    finally:
        kill(trainer)
    assert holder(run) is None  # the OS released the killed trainer's lock
    # a new trainer takes over, one update past the killed one's last checkpoint
    step = load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert train_main(["--resume", str(run), "--total-steps", str(step + 256), "--device", "cpu"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == step + 256


def test_refused_trainer_evaluator_and_adapter_change_nothing(finished_run, tmp_path, capsys):
    run = finished_run
    proc = hold(run)
    try:
        before = snapshot(run)
        for main, args, needle in [
            (train_main, ["--resume", run, "--total-steps", 4096, "--device", "cpu"], "resume training in"),
            (evaluate_main, [run, "--episodes", 1, "--name", "while-locked"], "write an evaluation into"),
            (adapt_main, [run, "--values", "masspole=0.3", "--episodes", 1, "--no-references", "--budgets", "0",
                          "--eval-episodes", 1], "write an adaptation into"),
        ]:
            line = helpers.expect_cli_error(capsys, main, args)
            assert needle in line and f"pid {proc.pid} " in line and "trains into it" in line
            assert snapshot(run) == before
        # readers are never refused
        assert hyperrl.load(run).policy([0.1]) is not None
    finally:
        kill(proc)
    assert evaluate_main([str(run), "--episodes", "1", "--name", "after-kill"]) == 0


def test_writers_of_outputs_share_the_lock_and_keep_trainers_out(finished_run, tmp_path, capsys):
    run = finished_run
    reader = hold(run, exclusive=False)  # e.g. a long evaluation writing into the run
    try:
        # a second output writer is not refused
        assert evaluate_main([str(run), "--episodes", "1", "--name", "beside-another"]) == 0
        line = helpers.expect_cli_error(capsys, train_main, ["--resume", run, "--total-steps", 4096])
        assert f"pid {reader.pid} " in line and "writes into it" in line
    finally:
        kill(reader)


def test_lock_is_reentrant_and_refuses_in_process_callers_of_another_holder(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with run_lock(d):
        with run_lock(d):  # the same process again: a sweep trial calling the trainer
            pass
        with run_lock(d, exclusive=False):  # and the evaluator
            pass
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (d / LOCK_NAME).read_text() == ""  # details cleared on release
    proc = hold(d)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} "):
            with run_lock(d, wait_s=0.3):
                pass
    finally:
        kill(proc)
    with run_lock(d):
        pass
