"""Checkpoints: round trip, RNG restore, atomic writes, corrupt files, best-score bookkeeping."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperrl import checkpoint as ckpt
from hyperrl import seeding
from hyperrl.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    git_commit,
    hyperrl_version,
    load_checkpoint,
    save_checkpoint,
)
from hyperrl.errors import HyperrlError
from hyperrl.fileio import OutputError


def _payload(step: int = 7, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    hyper = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    critic = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(list(hyper.parameters()) + list(critic.parameters()), lr=1e-3)
    loss = hyper(torch.randn(5, 3)).sum() + critic(torch.randn(5, 4)).sum()
    loss.backward()
    opt.step()
    return {
        "hypernet": hyper.state_dict(),
        "critic": critic.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": seeding.rng_state(),
        "generators": {"params": seeding.make_generator(seed + 1)},
        "step": step,
        "config": {"lr": 1e-3, "hidden": [8], "out": Path("runs/x"), "np": np.float32(0.5)},
        "family": "cartpole-mass",
        "extra": {"note": "anything"},
    }


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert isinstance(excinfo.value, HyperrlError)
    return msg


# ------------------------------------------------------------------------------------
# Round trip and RNG
# ------------------------------------------------------------------------------------
def test_round_trip(tmp_path: Path) -> None:
    payload = _payload()
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, payload)
    data = load_checkpoint(path)
    for key in ("hypernet", "critic"):
        assert data[key].keys() == payload[key].keys()
        for name, t in payload[key].items():
            assert torch.equal(data[key][name], t)
    assert data["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    for k, st in payload["optimizer"]["state"].items():
        assert torch.equal(data["optimizer"]["state"][k]["exp_avg"], st["exp_avg"])
    assert data["step"] == 7 and data["family"] == "cartpole-mass"
    assert data["format"] == FORMAT_VERSION
    assert data["version"] == hyperrl_version() != ""
    assert data["git_commit"] is None or isinstance(data["git_commit"], str)
    # converted to weights-only-safe types
    assert data["config"]["out"] == str(Path("runs/x"))
    assert data["config"]["np"] == 0.5 and isinstance(data["config"]["np"], float)
    assert isinstance(data["generators"]["params"], torch.Tensor)
    assert data["extra"] == {"note": "anything"}
    # the loaded state dicts load into fresh modules
    hyper = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    hyper.load_state_dict(data["hypernet"])


def _draws(gen: torch.Generator) -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(2).tolist(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())


def test_rng_restore_reproduces_draws(tmp_path: Path) -> None:
    seeding.seed_everything(123)
    gen = seeding.make_generator(5)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    torch.rand(2, generator=gen)
    payload = {"hypernet": {}, "step": 1, "rng": seeding.rng_state(),
               "generators": seeding.generator_states({"params": gen})}
    save_checkpoint(tmp_path / "c.pt", payload)
    expected = _draws(gen)
    _draws(gen)  # move every RNG on
    seeding.seed_everything(999)

    data = load_checkpoint(tmp_path / "c.pt")
    seeding.set_rng_state(data["rng"])
    fresh = seeding.make_generator(0)
    seeding.restore_generators({"params": fresh}, data["generators"])
    assert _draws(fresh) == expected


def test_seed_everything_and_generators() -> None:
    seeding.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seeding.seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    g1, g2 = seeding.make_generator(11, "cpu"), seeding.make_generator(11)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    with pytest.raises(KeyError, match="params"):
        seeding.restore_generators({"params": g1}, {})


def test_set_rng_state_ignores_cuda_states_without_cuda() -> None:
    state = seeding.rng_state()
    if not torch.cuda.is_available():
        state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    seeding.set_rng_state(state)  # no error on a CPU-only machine
    seeding.set_rng_state({})  # nothing to restore


# ------------------------------------------------------------------------------------
# Save-time validation and provenance
# ------------------------------------------------------------------------------------
def test_save_rejects_what_a_weights_only_load_cannot_read(tmp_path: Path) -> None:
    class Custom:
        pass

    with pytest.raises(TypeError, match=r"payload\['config'\]\['obj'\].*Custom"):
        save_checkpoint(tmp_path / "c.pt", {"hypernet": {}, "step": 0, "config": {"obj": Custom()}})
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "c.pt", {"hypernet": {}})
    assert not (tmp_path / "c.pt").exists()
    assert _tmp_files(tmp_path) == []


def test_git_commit_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_commit(tmp_path) is None  # not a repository
    assert git_commit(tmp_path / "missing" / "dir") is None
    commit = git_commit()
    assert commit is None or (len(commit) >= 7 and all(c in "0123456789abcdef" for c in commit))
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_commit() is None


# ------------------------------------------------------------------------------------
# Atomicity
# ------------------------------------------------------------------------------------
def test_crash_inside_torch_save_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, _payload(step=1))
    good = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, _payload(step=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 1
    assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError("rename failed"), KeyboardInterrupt()])
def test_crash_at_replace_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         exc: BaseException) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, _payload(step=1))

    def failing_replace(src, dst):
        raise exc

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    # an OS error is reported as one line naming the file (OutputError); Ctrl-C stays itself
    expected = OutputError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        save_checkpoint(path, _payload(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert _tmp_files(tmp_path) == []


def test_sigkill_during_saves_never_corrupts(tmp_path: Path) -> None:
    """A writer killed with SIGKILL at an arbitrary moment leaves a loadable checkpoint."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    path = tmp_path / "latest.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        from hyperrl.checkpoint import save_checkpoint
        torch.manual_seed(0)
        big = torch.randn(400_000)
        step = 0
        while True:
            save_checkpoint({str(path)!r}, {{"hypernet": {{"w": big + step}}, "step": step}})
            step += 1
            if step == 3:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + random.random() * 0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    data = load_checkpoint(path)
    assert data["step"] >= 2
    torch.manual_seed(0)
    assert torch.equal(data["hypernet"]["w"], torch.randn(400_000) + data["step"])
    # a stale temp file may remain after SIGKILL; the manager sweeps it on start
    CheckpointManager(tmp_path.parent / "unused")  # no checkpoints dir: nothing to do
    mdir = tmp_path / "run" / "checkpoints"
    mdir.mkdir(parents=True)
    (mdir / ".latest.pt.123.abcd.tmp").write_bytes(b"partial")
    CheckpointManager(tmp_path / "run")
    assert _tmp_files(mdir) == []


# ------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path)
    assert _one_line_error(ei, path) == f"checkpoint {path} does not exist"


@pytest.mark.parametrize("kind", ["truncated_half", "truncated_head", "truncated_tail", "empty",
                                  "random", "text", "bitflip", "directory"])
def test_corrupt_files(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"hypernet": {"w": torch.randn(20_000)}, "step": 3})
    b = good.read_bytes()
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated_half":
        bad.write_bytes(b[: len(b) // 2])
    elif kind == "truncated_head":
        bad.write_bytes(b[:64])
    elif kind == "truncated_tail":
        bad.write_bytes(b[:-20])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "random":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "text":
        bad.write_text("step: 3\nthis is not a checkpoint\n")
    elif kind == "bitflip":
        flipped = bytearray(b)
        for i in range(len(b) // 2, len(b) // 2 + 8):
            flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    elif kind == "directory":
        bad.mkdir()
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(bad)
    msg = _one_line_error(ei, bad)
    assert msg.startswith(f"checkpoint {bad} is corrupt or not a hyperrl checkpoint: ")
    # no chained traceback: "During handling of the above exception..." never shows
    assert ei.value.__cause__ is None
    assert ei.value.__context__ is None or ei.value.__suppress_context__


def test_foreign_torch_files(tmp_path: Path) -> None:
    cases = {
        "list.pt": [1, 2, 3],
        "nokeys.pt": {"state_dict": {"w": torch.ones(2)}},
        "badformat.pt": {"format": "one", "step": 0, "hypernet": {}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match="corrupt or not a hyperrl checkpoint") as ei:
            load_checkpoint(tmp_path / name)
        _one_line_error(ei, tmp_path / name)
    assert "missing key(s) 'format', 'step', 'hypernet'" in _msg(load_checkpoint, tmp_path / "nokeys.pt")

    # a pickled custom class must not be unpickled (weights-only load)
    torch.save({"x": torch.optim.Adam}, tmp_path / "code.pt")
    assert "weights-only load refuses" in _msg(load_checkpoint, tmp_path / "code.pt")

    torch.save({"format": FORMAT_VERSION + 1, "step": 0, "hypernet": {}}, tmp_path / "new.pt")
    assert "upgrade hyperrl" in _msg(load_checkpoint, tmp_path / "new.pt")


def _msg(fn, *args) -> str:
    with pytest.raises(CheckpointError) as ei:
        fn(*args)
    assert "\n" not in str(ei.value)
    return str(ei.value)


# ------------------------------------------------------------------------------------
# Manager
# ------------------------------------------------------------------------------------
def test_manager_latest(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "run")
    assert m.latest_path == tmp_path / "run" / "checkpoints" / "latest.pt"
    assert m.best_path == tmp_path / "run" / "checkpoints" / "best.pt"
    assert not m.has_latest()
    m.save_latest(_payload(step=4))
    assert m.has_latest() and m.load_latest()["step"] == 4
    m.save_latest(_payload(step=5))
    assert m.load_latest()["step"] == 5
    assert _tmp_files(m.dir) == []


def test_best_only_overwritten_by_better_score(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path)
    assert m.best_score == -math.inf and not m.has_best()
    assert m.save_best({"hypernet": {}, "step": 1}, 100.0)
    assert not m.save_best({"hypernet": {}, "step": 2}, 50.0)
    assert not m.save_best({"hypernet": {}, "step": 3}, 100.0)  # ties do not overwrite
    assert not m.save_best({"hypernet": {}, "step": 4}, float("nan"))
    best = m.load_best()
    assert best["step"] == 1 and best["best_score"] == 100.0
    assert m.save_best({"hypernet": {}, "step": 5}, torch.tensor(200.0))
    assert m.load_best()["step"] == 5

    # a new manager (a resumed run) knows the best score
    m2 = CheckpointManager(tmp_path)
    assert m2.best_score == 200.0
    assert not m2.save_best({"hypernet": {}, "step": 6}, 150.0)
    assert m2.load_best()["step"] == 5

    # best.json lost or stale (crash between the two writes): the payload wins
    m.best_json_path.unlink()
    assert CheckpointManager(tmp_path).best_score == 200.0
    m.best_json_path.write_text('{"score": 1.0, "best_pt": [0, 0]}')
    m3 = CheckpointManager(tmp_path)
    assert m3.best_score == 200.0
    assert not m3.save_best({"hypernet": {}, "step": 7}, 150.0)
    assert _tmp_files(m.dir) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_and_rng_round_trip(tmp_path: Path) -> None:
    seeding.seed_everything(1)
    gen = seeding.make_generator(2, "cuda")
    torch.rand(3, device="cuda")
    save_checkpoint(tmp_path / "c.pt", {"hypernet": {}, "step": 0, "rng": seeding.rng_state(),
                                        "generators": seeding.generator_states({"g": gen})})
    expected = (torch.rand(3, device="cuda").tolist(), torch.rand(3, generator=gen, device="cuda").tolist())
    data = load_checkpoint(tmp_path / "c.pt", map_location="cuda")
    assert len(data["rng"]["cuda"]) == torch.cuda.device_count()
    seeding.set_rng_state(data["rng"])
    fresh = seeding.make_generator(0, "cuda")
    seeding.restore_generators({"g": fresh}, data["generators"])
    assert (torch.rand(3, device="cuda").tolist(), torch.rand(3, generator=fresh, device="cuda").tolist()) == expected
