"""GPU smoke test: the CUDA code paths end to end, in a few minutes, with PASS/FAIL per step.

    python benchmarks/gpu_smoke.py                    # on a CUDA machine (default --device cuda)
    python benchmarks/gpu_smoke.py --device cuda:1 --out runs/gpu-smoke/mine
    python benchmarks/gpu_smoke.py --allow-cpu        # without CUDA: the same steps on the CPU

Steps (each in its own subprocess, with its own timeout):

1. ``cuda-tests``: pytest on exactly the tests that are skipped without CUDA (found by
   reading ``tests/``: those marked ``skipif(not torch.cuda.is_available())``); PASS when
   at least one ran, none was skipped and all passed.
2. ``train``: a short ``cartpole-mass`` run through ``hyperrl.train.main`` on the device
   (batched simulator there); PASS when it finishes, writes ``metrics.json`` and
   ``metrics["device"]`` is the device.
3. ``sync``: host-device syncs counted (``torch.cuda.set_sync_debug_mode("warn")``, one
   warning per sync) over two runs that differ only in ``ppo.num_steps`` (T), split by
   phase of ``hyperrl.train.train``: setup, the training loop, evaluation, checkpoints.
   PASS when the loop's count does not grow with T (at most 2 more per update, from the
   logging reads that happen only in updates where an episode ended; one sync per
   rollout step would add T_hi - T_lo per update).
4. ``evaluate``: ``python -m hyperrl.evaluate RUN --device D`` on the batched and the
   Gymnasium backend (results.json written, returns finite), and the batched backend on
   the device vs on the CPU on a 40-step-horizon copy of the run (returns equal to 1e-6).
5. ``adapt``: ``python -m hyperrl.adapt RUN --mode context,weights,hypernet,sim --device D``
   with the ``scratch`` reference; PASS when it exits 0 and writes each mode's folder.
6. ``export-torchscript`` / ``export-onnx``: a policy of the device-trained run exported;
   PASS when the exported module's actions equal the policy's on real observations (an
   action may differ only where the two best logits tie to 1e-4, i.e. where kernels'
   rounding decides). ONNX is SKIP when ``onnx``/``onnxruntime`` are not installed
   (``pip install -e .[export]``).
7. ``throughput``: the same training config on the device and on the CPU (torch's default
   thread count, printed), env steps/s after one warm-up update, and their ratio.

Without CUDA the script prints one line and exits 0; ``--allow-cpu`` runs the same steps
with ``--device cpu`` instead (smaller sizes; the CUDA-only tests and the sync count are
SKIP), which checks the script itself on a machine without a GPU. Exit status: 0 when
every step passed or was skipped, 1 otherwise. Outputs and one log per step go to
``--out`` (default ``runs/gpu-smoke/<timestamp>``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILY = "cartpole-mass"
ADAPT_VALUES = "masspole=0.8"
EXPORT_VALUES = {"masspole": 0.7}
SHORT_HORIZON = 40  # steps: rounding differences cannot grow into a different action (tests/helpers.py)
TIE = 1e-4  # logit margin under which a CUDA and a CPU kernel may pick different actions
SYNC_MESSAGE = "called a synchronizing CUDA operation"  # torch's warning text in sync-debug mode
PASS, FAIL, SKIP, TIMEOUT = "PASS", "FAIL", "SKIP", "TIMEOUT"
NEVER = 10**12  # an eval / checkpoint interval beyond any run here


@dataclass(frozen=True)
class Sizes:
    """Run sizes per device kind: CUDA ones exercise the GPU, CPU ones keep --allow-cpu short."""

    num_envs: int  # train step (and the run the later steps use)
    num_steps: int
    updates: int
    sync_envs: int
    sync_steps: tuple[int, int]  # T_lo, T_hi
    sync_updates: int
    tp_envs: int  # throughput: 1 warm-up update + tp_updates measured ones
    tp_steps: int
    tp_updates: int
    sim_steps: int  # adapt --mode sim: simulated steps (the run's config sets N and T)


CUDA_SIZES = Sizes(1024, 16, 4, 1024, (8, 32), 3, 4096, 16, 5, 20_000)
CPU_SIZES = Sizes(64, 16, 4, 64, (8, 32), 2, 512, 16, 3, 2_048)


@dataclass(frozen=True)
class Step:
    """One child process; it reports one result per name in ``results``."""

    name: str
    results: tuple[str, ...]
    timeout_cuda: float  # seconds
    timeout_cpu: float


STEPS = (
    Step("cuda-tests", ("cuda-tests",), 120, 90),
    Step("train", ("train",), 90, 60),
    Step("sync", ("sync",), 90, 60),
    Step("evaluate", ("evaluate",), 90, 90),
    Step("adapt", ("adapt",), 150, 150),
    Step("export", ("export-torchscript", "export-onnx"), 60, 60),
    Step("throughput", ("throughput",), 90, 60),
)


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # extra lines printed under the result
    data: dict[str, Any] = field(default_factory=dict)


def one_line(text: Any, limit: int = 240) -> str:
    s = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def num(x: Any, spec: str) -> str:
    """``format(x, spec)`` for a number, ``x`` as written otherwise (a metric may be missing)."""
    return format(x, spec) if isinstance(x, (int, float)) else repr(x)


def error_line(e: BaseException) -> str:
    return one_line(f"{type(e).__name__}: {e}")


# ======================================================================================
# Child side: the steps
# ======================================================================================
@dataclass(frozen=True)
class Ctx:
    device: str  # "cuda", "cuda:1" or "cpu"
    out: Path
    sizes: Sizes
    deadline: float  # time.monotonic() by which the step must be done (leaves the parent a margin)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    def remaining(self, reserve: float = 5.0) -> float:
        """Seconds left for a subprocess, keeping ``reserve`` for the checks after it."""
        return max(1.0, self.deadline - time.monotonic() - reserve)


def cli(ctx: Ctx, module: str, args: Sequence[str], log_name: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repo root with a timeout; output kept in a log file."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.remaining())
    (ctx.out / "logs" / f"{log_name}.log").write_text(f"$ {' '.join(cmd)}\n[exit {proc.returncode}]\n"
                                                      f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no stderr)"]
        raise RuntimeError(f"{module} exited {proc.returncode}: {one_line(last[0])}")
    return proc


def train_args(ctx: Ctx, run_dir: Path, num_envs: int, num_steps: int, updates: int,
               device: str | None = None, quiet: bool = False) -> list[str]:
    """``hyperrl.train`` arguments for ``updates`` whole rollouts of ``num_envs`` x ``num_steps``.

    ``quiet``: evaluation and checkpoints only at the end (the run's last update), so they
    neither cost time during the measured updates nor add syncs to the loop."""
    args = ["--env-family", FAMILY, "--device", device or ctx.device, "--run-dir", str(run_dir), "--seed", "1",
            "--total-steps", str(num_envs * num_steps * updates), "--set", f"env.num_envs={num_envs}",
            "--set", f"ppo.num_steps={num_steps}", "--set", "progress=false"]
    if quiet:
        args += ["--set", f"eval.interval_steps={NEVER}", "--set", f"checkpoint_interval_steps={NEVER}",
                 "--set", "eval.episodes=1", "--set", "histogram_interval_evals=0"]
    return args


# ---- 1. the CUDA-only tests ------------------------------------------------------------
def cuda_only_tests(tests_dir: Path) -> list[str]:
    """Node ids of the tests skipped without CUDA: functions or classes decorated with
    ``pytest.mark.skipif(not torch.cuda.is_available(), ...)``, and whole modules whose
    ``pytestmark`` is that mark. Read from the source, so a new CUDA test is picked up."""
    cond = re.compile(r"^not\s+torch\.cuda\.is_available\(\)$")

    def cuda_mark(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call) or not ast.unparse(node.func).endswith("mark.skipif"):
            return False
        args = list(node.args[:1]) + [k.value for k in node.keywords if k.arg == "condition"]
        return any(cond.match(ast.unparse(a)) for a in args)

    ids: list[str] = []
    for path in sorted(tests_dir.glob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                    for t in node.targets):
                marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                if any(cuda_mark(m) for m in marks):
                    ids.append(rel)
                    break
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if any(cuda_mark(d) for d in node.decorator_list):
                    ids.append(f"{rel}::{node.name}")
    return ids


def step_cuda_tests(ctx: Ctx) -> list[Result]:
    ids = cuda_only_tests(ROOT / "tests")
    if not ids:
        return [Result("cuda-tests", FAIL, "no test marked skipif(not torch.cuda.is_available()) found in tests/")]
    xml = ctx.out / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={xml}", *ids]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.remaining())
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
    if not xml.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        raise RuntimeError(f"pytest exited {proc.returncode} without a report: {one_line(tail[-1] if tail else '')}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    ran = n["tests"] - n["skipped"]
    passed = ran - n["failures"] - n["errors"]
    detail = (f"{len(ids)} selected ({', '.join(i.split('::')[-1] for i in ids)}): {n['tests']} collected, "
              f"{ran} ran, {passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped")
    data = {**n, "ran": ran, "passed": passed, "ids": ids, "returncode": proc.returncode}
    if not ctx.cuda:
        ok = n["tests"] > 0 and n["skipped"] == n["tests"] and proc.returncode == 0
        return [Result("cuda-tests", SKIP if ok else FAIL, ("no CUDA: " if ok else "") + detail, data=data)]
    ok = n["tests"] > 0 and n["skipped"] == 0 and ran == passed and proc.returncode == 0
    return [Result("cuda-tests", PASS if ok else FAIL, detail, data=data)]


# ---- 2. training --------------------------------------------------------------------------
def step_train(ctx: Ctx) -> list[Result]:
    from hyperrl.train import main as train_main

    s = ctx.sizes
    if ctx.run_dir.exists():  # a rerun into the same --out starts the run afresh
        shutil.rmtree(ctx.run_dir)
    rc = train_main(train_args(ctx, ctx.run_dir, s.num_envs, s.num_steps, s.updates))
    metrics_path = ctx.run_dir / "metrics.json"
    if rc != 0 or not metrics_path.is_file():
        written = "written" if metrics_path.is_file() else "missing"
        return [Result("train", FAIL, f"hyperrl.train returned {rc}; metrics.json {written}")]
    m = json.loads(metrics_path.read_text())
    want = s.num_envs * s.num_steps * s.updates
    problems = []
    if not str(m.get("device", "")).startswith("cuda" if ctx.cuda else "cpu"):
        problems.append(f"metrics device is {m.get('device')!r}")
    if m.get("env_steps") != want:
        problems.append(f"env_steps {m.get('env_steps')} != {want}")
    if not (ctx.run_dir / "checkpoints" / "best.pt").is_file():
        problems.append("no checkpoints/best.pt")
    for key in ("eval_interpolation_return", "eval_extrapolation_return", "steps_per_second"):
        if not isinstance(m.get(key), (int, float)) or not math.isfinite(m[key]):
            problems.append(f"{key} is {m.get(key)!r}")
    detail = (f"N={s.num_envs} T={s.num_steps} x {s.updates} updates on {m.get('device')}: "
              f"{num(m.get('env_steps'), ',')} steps, {num(m.get('steps_per_second'), ',.0f')} steps/s, "
              f"held-out return {num(m.get('eval_interpolation_return'), '.1f')} / "
              f"{num(m.get('eval_extrapolation_return'), '.1f')}")
    return [Result("train", FAIL if problems else PASS, "; ".join(problems + [detail]),
                   data={"metrics": {k: v for k, v in m.items() if k != "history"}})]


# ---- 3. host-device syncs ----------------------------------------------------------------
def loop_lines(fn: Callable[..., Any]) -> tuple[int, int] | None:
    """First and last line of the training loop (the ``while ... < num_updates:`` statement) in ``fn``."""
    lines, start = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if re.match(r"\s*while\s.*<\s*num_updates\s*:", text):
            indent = len(text) - len(text.lstrip())
            for j in range(i + 1, len(lines)):
                s = lines[j]
                if s.strip() and not s.lstrip().startswith("#") and len(s) - len(s.lstrip()) <= indent:
                    return start + i, start + j - 1
            return start + i, start + len(lines) - 1
    return None


class SyncRecorder:
    """Counts torch's sync-debug warnings, each attributed to a phase of ``hyperrl.train.train``.

    The phase comes from the Python stack at the warning: inside ``evaluate_heldout`` or
    ``log_heldout`` -> ``eval``; in ``payload``, ``checkpoint_payload`` or
    ``hyperrl/checkpoint.py`` -> ``checkpoint``; otherwise the line ``train``
    is on: before the loop -> ``setup``, in it -> ``loop``, after it -> ``teardown``; no
    ``train`` frame -> ``other`` (argument parsing, config). A stack is needed because
    ``warnings.catch_warnings(record=True)`` keeps only the innermost line, and most syncs
    happen inside torch or helper functions.
    """

    def __init__(self, enabled: bool):
        import hyperrl.checkpoint as checkpoint_mod
        import hyperrl.train as train_mod

        self.enabled = enabled
        self.train_code = train_mod.train.__code__
        self.train_file = self.train_code.co_filename
        self.checkpoint_file = checkpoint_mod.load_checkpoint.__code__.co_filename
        self.package_dir = str(Path(self.train_file).parent)  # the hyperrl actually imported
        self.loop = loop_lines(train_mod.train)
        self.phases: Counter[str] = Counter()
        self.loop_sites: Counter[str] = Counter()

    def _record(self, frame: FrameType | None) -> None:
        phase, site = "other", None
        f = frame
        while f is not None:
            code = f.f_code
            if code.co_filename.startswith(self.package_dir) and site is None:
                site = f"{Path(code.co_filename).name}:{f.f_lineno} ({code.co_name})"
            if code.co_name in ("evaluate_heldout", "log_heldout") and code.co_filename == self.train_file:
                phase = "eval"
                break
            if (code.co_name in ("payload", "checkpoint_payload") and code.co_filename == self.train_file) \
                    or code.co_filename == self.checkpoint_file:
                phase = "checkpoint"
                break
            if code is self.train_code:
                if self.loop is None:
                    phase = "loop"  # the loop was not found: everything in train() counts
                else:
                    first, last = self.loop
                    phase = "setup" if f.f_lineno < first else "loop" if f.f_lineno <= last else "teardown"
                break
            f = f.f_back
        self.phases[phase] += 1
        if phase == "loop":
            self.loop_sites[site or "?"] += 1

    def __enter__(self) -> "SyncRecorder":
        import torch

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # "always": the default filter shows a warning once per line, hiding repeats
        warnings.filterwarnings("always", message=re.escape(SYNC_MESSAGE))
        shown = warnings.showwarning
        skip = {warnings.__file__, __file__}

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if SYNC_MESSAGE not in str(message):
                shown(message, category, filename, lineno, file, line)
                return
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename in skip:
                f = f.f_back
            self._record(f)

        warnings.showwarning = show
        if self.enabled:
            self._mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.enabled:
            torch.cuda.set_sync_debug_mode(self._mode)
        self._warnings.__exit__(*exc)


def step_sync(ctx: Ctx) -> list[Result]:
    from hyperrl.train import main as train_main

    s = ctx.sizes
    counts: dict[int, SyncRecorder] = {}
    for t in s.sync_steps:
        run_dir = ctx.out / f"sync-T{t}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        with SyncRecorder(enabled=ctx.cuda) as rec:
            rc = train_main(train_args(ctx, run_dir, s.sync_envs, t, s.sync_updates, quiet=True))
        if rc != 0:
            return [Result("sync", FAIL, f"training with T={t} returned {rc}")]
        counts[t] = rec
    lo, hi = s.sync_steps
    u = s.sync_updates
    lines = []
    for t, rec in counts.items():
        p = rec.phases
        lines.append(f"T={t:>3}: loop {p['loop']} ({p['loop'] / u:.1f} per update), setup {p['setup']}, "
                     f"eval {p['eval']}, checkpoint {p['checkpoint']}, teardown {p['teardown']}, other {p['other']}")
    rec_lo, rec_hi = counts[lo], counts[hi]
    if rec_hi.loop is None:
        lines.append("note: the training loop was not found in hyperrl.train.train; all its syncs count as 'loop'")
    grow = (rec_hi.phases["loop"] - rec_lo.phases["loop"]) / u
    for site, c in rec_hi.loop_sites.most_common(6):
        lines.append(f"  T={hi} loop sync at {site}: {c}")
    data = {str(t): {"phases": dict(r.phases), "loop_sites": dict(r.loop_sites)} for t, r in counts.items()}
    data["loop_growth_per_update"] = grow
    if not ctx.cuda:
        return [Result("sync", SKIP, f"no CUDA: syncs are counted on CUDA only (ran T={lo} and T={hi} on cpu, "
                                     f"{u} updates each)", lines=lines, data=data)]
    # Per-step syncs would add (hi - lo) per update; up to 2 come from the logging reads
    # (`if cnt:` in train) that only happen in updates where some episode ended.
    ok = grow <= 2
    detail = (f"loop syncs T={lo}: {rec_lo.phases['loop']}, T={hi}: {rec_hi.phases['loop']} over {u} updates "
              f"(+{grow:.1f} per update; one per rollout step would be +{hi - lo})")
    return [Result("sync", PASS if ok else FAIL, detail, lines=lines, data=data)]


# ---- 4. evaluation -------------------------------------------------------------------------
def need_run(ctx: Ctx, name: str) -> Result | None:
    if (ctx.run_dir / "metrics.json").is_file() and (ctx.run_dir / "checkpoints" / "best.pt").is_file():
        return None
    return Result(name, SKIP, f"no trained run in {ctx.run_dir} (the train step failed)")


def results_dir(proc: subprocess.CompletedProcess[str], fallback: Path) -> Path:
    m = re.search(r"^wrote (.+)/ \(results\.json", proc.stdout, re.M)
    return Path(m.group(1)) if m else fallback


def short_horizon_copy(run_dir: Path, dest: Path, max_episode_steps: int) -> Path:
    """tests/helpers.py's copy of a run whose family ends episodes at ``max_episode_steps``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("smoke_test_helpers", ROOT / "tests" / "helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    if dest.exists():
        shutil.rmtree(dest)
    return helpers.short_horizon_copy(run_dir, dest, max_episode_steps)


def step_evaluate(ctx: Ctx) -> list[Result]:
    import torch

    import hyperrl
    from hyperrl.evaluate import run_evaluation

    if (missing := need_run(ctx, "evaluate")) is not None:
        return [missing]
    found = []
    for backend, default_name in (("batched", "heldout-all-batched"), ("gymnasium", "heldout-all")):
        proc = cli(ctx, "hyperrl.evaluate", [ctx.run_dir, "--device", ctx.device, "--backend", backend,
                                              "--episodes", 2], f"evaluate-{backend}")
        res = json.loads((results_dir(proc, ctx.run_dir / "eval" / default_name) / "results.json").read_text())
        returns = [r for v in res["variants"] for r in v["returns"]]
        if not returns or not all(math.isfinite(r) for r in returns):
            return [Result("evaluate", FAIL, f"{backend}: returns not finite or empty: {returns[:8]}")]
        if res["settings"]["device"] != str(torch.device(ctx.device)):
            return [Result("evaluate", FAIL, f"{backend}: results.json says device {res['settings']['device']}")]
        found.append(f"{backend} {res['splits']['all']['mean']:.1f}")
    # Device vs CPU on a short horizon, where rounding cannot change an action.
    run = hyperrl.load(short_horizon_copy(ctx.run_dir, ctx.out / f"run-h{SHORT_HORIZON}", SHORT_HORIZON))
    values = torch.cat([run.family.heldout_values(s) for s in ("interpolation", "extrapolation")])
    on_dev = run_evaluation(run, values, episodes=2, seed=3, backend="batched", device=ctx.device)
    on_cpu = run_evaluation(run, values, episodes=2, seed=3, backend="batched", device="cpu")
    gym_dev = run_evaluation(run, values, episodes=2, seed=3, backend="gymnasium", device=ctx.device)
    diff = float((on_dev.returns - on_cpu.returns).abs().max())
    diff_gym = float((gym_dev.returns - on_cpu.returns).abs().max())
    same_len = torch.equal(on_dev.lengths, on_cpu.lengths) and torch.equal(gym_dev.lengths, on_cpu.lengths)
    ok = diff <= 1e-6 and diff_gym <= 1e-6 and same_len
    detail = (f"mean held-out return {', '.join(found)}; {SHORT_HORIZON}-step copy, {values.shape[0]} variants x 2: "
              f"batched {ctx.device} vs cpu max |diff| {diff:.2g}, gymnasium {ctx.device} vs batched cpu "
              f"{diff_gym:.2g}, lengths {'equal' if same_len else 'DIFFER'}")
    return [Result("evaluate", PASS if ok else FAIL, detail,
                   data={"max_diff": diff, "max_diff_gymnasium": diff_gym, "lengths_equal": same_len})]


# ---- 5. adaptation -------------------------------------------------------------------------
def step_adapt(ctx: Ctx) -> list[Result]:
    if (missing := need_run(ctx, "adapt")) is not None:
        return [missing]
    modes = ("context", "weights", "hypernet", "sim")
    if (ctx.run_dir / "adapt").exists():  # a rerun into the same --out adapts afresh
        shutil.rmtree(ctx.run_dir / "adapt")
    proc = cli(ctx, "hyperrl.adapt", [ctx.run_dir, "--values", ADAPT_VALUES, "--episodes", 2, "--mode", ",".join(modes),
                                      "--device", ctx.device, "--set", f"sim_steps={ctx.sizes.sim_steps}",
                                      "--set", "sim_check_episodes=8", "--eval-episodes", 2], "adapt")
    dirs = dict(re.findall(r"^wrote (.+)/ \((\w+): ", proc.stdout, re.M))
    by_mode = {m: Path(d) for d, m in dirs.items()}
    problems, finals = [], []
    for m in modes:
        d = by_mode.get(m)
        if d is None or not d.is_dir():
            problems.append(f"{m}: no folder written")
            continue
        absent = [f for f in ("run.json", "metrics.json", "policy.pt") if not (d / f).is_file()]
        if absent:
            problems.append(f"{m}: {', '.join(absent)} missing in {d.name}")
            continue
        met = json.loads((d / "metrics.json").read_text())
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in met["returns"].values()):
            problems.append(f"{m}: non-finite returns {met['returns']}")
        finals.append(f"{m} {met['final_return']:.0f}")
        if m == modes[-1]:  # every mode's metrics.json holds all curves, the references' too
            scratch = met.get("curves", {}).get("scratch")
            if not scratch:
                problems.append("no scratch reference in the curves")
            else:
                finals.append(f"scratch {scratch[-1]['return_mean']:.0f}")
    detail = f"{ADAPT_VALUES}, 2 episodes, final return: {', '.join(finals)}"
    return [Result("adapt", FAIL if problems else PASS, "; ".join(problems + [detail]), data={"dirs": dirs})]


# ---- 6. export -----------------------------------------------------------------------------
def real_observations(family: Any, values: dict[str, float], n: int = 96) -> Any:
    """``[n, D]`` float32 observations from the variant's Gymnasium env under random actions
    (fresh episodes as they end): states the policy meets, not arbitrary points."""
    import numpy as np

    env = family.make_env(values)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows = []
    try:
        for i in range(n):
            rows.append(np.asarray(obs, dtype=np.float32))
            obs, _, term, trunc, _ = env.step(env.action_space.sample() if i % 3 else int(rng.integers(2)))
            if term or trunc:
                obs, _ = env.reset(seed=i + 1)
    finally:
        env.close()
    return np.stack(rows)


def compare_actions(what: str, got: Any, expected: Any, margin: Any) -> tuple[bool, str]:
    """Discrete actions equal, except where the two best logits are within ``TIE``."""
    import numpy as np

    got, expected = np.asarray(got).reshape(-1), np.asarray(expected).reshape(-1)
    if got.shape != expected.shape:
        return False, f"{what}: shape {got.shape} != {expected.shape}"
    differ = got != expected
    near_tie = margin < TIE
    bad = int((differ & ~near_tie).sum())
    note = f", {int(differ.sum())} at near-ties" if differ.any() else ""
    return bad == 0, f"{what} {len(got) - int(differ.sum())}/{len(got)} equal{note}" + (f", {bad} WRONG" if bad else "")


def step_export(ctx: Ctx) -> list[Result]:
    import importlib.util

    import numpy as np
    import torch

    import hyperrl

    missing = [need_run(ctx, n) for n in ("export-torchscript", "export-onnx")]
    if missing[0] is not None:
        return missing  # type: ignore[return-value]
    t0 = time.perf_counter()
    out = ctx.out / "export"
    out.mkdir(exist_ok=True)
    run = hyperrl.load(ctx.run_dir)
    policy = run.policy(EXPORT_VALUES, device=ctx.device)
    obs = real_observations(run.family, EXPORT_VALUES)
    expected, _ = policy.predict(obs)
    with torch.no_grad():
        logits = policy.to_module().mlp(torch.from_numpy(obs).to(policy.device, policy.dtype))
        top2 = logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).cpu().numpy()
    results = []
    try:
        path = policy.export_torchscript(out / "policy.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in newer torch
            module = torch.jit.load(str(path), map_location=torch.device(ctx.device))
        x = torch.from_numpy(obs).to(ctx.device)
        # several calls: TorchScript's profiling executor may swap in a fused graph after the first ones
        checks = [compare_actions(f"call {i + 1}:", module(x).cpu().numpy(), expected, margin) for i in range(3)]
        single = module(x[0]).cpu().numpy()  # one observation [D], as SB3's predict takes it
        checks.append((single.shape == () and (single == expected[0] or margin[0] < TIE), "single obs ok"))
        ok = all(c for c, _ in checks)
        results.append(Result("export-torchscript", PASS if ok else FAIL,
                              f"{path.name} on {ctx.device}, {len(obs)} real observations: "
                              + "; ".join(msg for _, msg in checks), seconds=time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001 - reported as this result's FAIL; ONNX still runs
        traceback.print_exc()
        results.append(Result("export-torchscript", FAIL, error_line(e), seconds=time.perf_counter() - t0))

    t0 = time.perf_counter()
    absent = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if absent:
        results.append(Result("export-onnx", SKIP, f"{' and '.join(absent)} not installed (pip install -e .[export])"))
        return results
    try:
        import onnxruntime as ort

        path = policy.export_onnx(out / "policy.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"obs": obs.astype(np.float32)})
        ok, msg = compare_actions("onnxruntime (cpu):", got, expected, margin)
        results.append(Result("export-onnx", PASS if ok else FAIL, f"{path.name}, {len(obs)} real observations: {msg}",
                              seconds=time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        results.append(Result("export-onnx", FAIL, error_line(e), seconds=time.perf_counter() - t0))
    return results


# ---- 7. throughput -------------------------------------------------------------------------
def measured_rate(run_dir: Path, metrics: dict[str, Any]) -> tuple[float, str]:
    """Env steps/s over the updates after the first (warm-up: kernel loading, allocator).

    The trainer logs ``charts/steps_per_second`` after every update as steps since the loop
    started over the seconds since then; two such points give the rate between them. Falls
    back to ``metrics["steps_per_second"]`` (the whole loop, warm-up included)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        ev = sorted(acc.Scalars("charts/steps_per_second"), key=lambda e: e.step)
        first, last = ev[0], ev[-1]
        seconds = last.step / last.value - first.step / first.value
        if len(ev) >= 2 and seconds > 0:
            return (last.step - first.step) / seconds, f"updates 2..{len(ev)}"
    except Exception as e:  # noqa: BLE001 - the whole-loop figure is still meaningful
        print(f"reading {run_dir}'s TensorBoard scalars failed: {error_line(e)}", flush=True)
    return float(metrics["steps_per_second"]), "whole loop"


def step_throughput(ctx: Ctx) -> list[Result]:
    import torch

    from hyperrl.train import main as train_main

    s = ctx.sizes
    rates: dict[str, float] = {}
    lines = []
    for label, device in (("device", ctx.device), ("cpu", "cpu")):
        run_dir = ctx.out / f"throughput-{label}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        rc = train_main(train_args(ctx, run_dir, s.tp_envs, s.tp_steps, 1 + s.tp_updates, device=device, quiet=True))
        if rc != 0:
            return [Result("throughput", FAIL, f"training on {device} returned {rc}")]
        m = json.loads((run_dir / "metrics.json").read_text())
        rate, over = measured_rate(run_dir, m)
        rates[label] = rate
        where = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
                 else f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores")
        lines.append(f"{device:>7}: {rate:>12,.0f} env steps/s ({over}; whole loop "
                     f"{num(m.get('steps_per_second'), ',.0f')}) [{where}]")
    ratio = rates["device"] / rates["cpu"]
    ok = all(math.isfinite(r) and r > 0 for r in rates.values())
    detail = (f"N={s.tp_envs} T={s.tp_steps}, 1 warm-up + {s.tp_updates} updates: {ctx.device} {rates['device']:,.0f}, "
              f"cpu ({torch.get_num_threads()} threads) {rates['cpu']:,.0f} steps/s, ratio {ratio:.2f}x")
    return [Result("throughput", PASS if ok else FAIL, detail, lines=lines,
                   data={"steps_per_second": rates, "ratio": ratio, "cpu_threads": torch.get_num_threads()})]


CHILD_STEPS: dict[str, Callable[[Ctx], list[Result]]] = {
    "cuda-tests": step_cuda_tests, "train": step_train, "sync": step_sync, "evaluate": step_evaluate,
    "adapt": step_adapt, "export": step_export, "throughput": step_throughput,
}


def child_main(args: argparse.Namespace) -> int:
    """Run one step and write its results to ``<out>/steps/<step>.json``."""
    step = next(s for s in STEPS if s.name == args.step)
    ctx = Ctx(args.device, args.out, CUDA_SIZES if args.device.startswith("cuda") else CPU_SIZES,
              time.monotonic() + args.step_timeout - 3.0)
    t0 = time.perf_counter()
    try:
        results = CHILD_STEPS[step.name](ctx)
    except subprocess.TimeoutExpired as e:  # a CLI the step runs hung: cut at the step's deadline
        cmd = e.cmd if isinstance(e.cmd, str) else " ".join(map(str, e.cmd[1:4]))
        results = [Result(name, TIMEOUT, f"{cmd} ... did not finish in {e.timeout:.0f} s") for name in step.results]
    except Exception as e:  # noqa: BLE001 - one line for the summary, the traceback in the log
        traceback.print_exc()
        results = [Result(name, FAIL, error_line(e)) for name in step.results]
    wall = time.perf_counter() - t0
    for r in results:
        r.seconds = r.seconds or wall
    report = json.dumps([asdict(r) for r in results], indent=2, default=str)
    (ctx.out / "steps" / f"{step.name}.json").write_text(report)
    return 0


# ======================================================================================
# Parent side: one subprocess per step, a timeout each, the summary
# ======================================================================================
def run_step(step: Step, device: str, out: Path, timeout: float) -> tuple[list[Result], float]:
    """The step in a subprocess: a hang is killed at ``timeout`` (its whole process group,
    pytest and CLI grandchildren included), a crash or a poisoned CUDA context ends only
    that step, and the sync-debug mode of one step cannot leak into another."""
    report = out / "steps" / f"{step.name}.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--device", device,
           "--out", str(out), "--step-timeout", f"{timeout:.0f}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(out / "logs" / f"{step.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            wall = time.perf_counter() - t0
            return [Result(n, TIMEOUT, f"no result after {timeout:.0f} s (killed); see logs/{step.name}.log",
                           seconds=wall) for n in step.results], wall
    wall = time.perf_counter() - t0
    if report.is_file():
        return [Result(**r) for r in json.loads(report.read_text())], wall
    tail = [ln for ln in (out / "logs" / f"{step.name}.log").read_text(errors="replace").splitlines() if ln.strip()]
    return [Result(n, FAIL, f"step process exited {rc} without a report: {one_line(tail[-1] if tail else '')}",
                   seconds=wall) for n in step.results], wall


def describe_machine(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        try:
            p = torch.cuda.get_device_properties(torch.device(device))
            what = f"{p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), CUDA {torch.version.cuda}"
        except Exception as e:  # noqa: BLE001 - the steps then report what fails
            what = f"{device} (querying it failed: {error_line(e)})"
    else:
        what = "CPU only"
    return (f"{what}; torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, "
            f"torch CPU threads {torch.get_num_threads()}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without CUDA, run the same steps with --device cpu (smaller sizes) instead of stopping")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/gpu-smoke/<timestamp>)")
    p.add_argument("--time-limit", type=float, default=290.0, metavar="SECONDS",
                   help="wall-clock cap for all steps together: each step's timeout is cut to what is left, and "
                        "steps that find less than 10 s left are reported TIMEOUT without running")
    p.add_argument("--only", default=None, metavar="STEP,...",
                   help=f"run only these steps ({', '.join(s.name for s in STEPS)}); later steps need 'train'")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step (child process)
    p.add_argument("--step-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.step is not None:
        args.out = args.out.resolve()
        return child_main(args)

    import torch

    device = args.device.strip().lower()
    if not re.fullmatch(r"cuda(:\d+)?", device):
        p.error(f"--device {args.device!r}: expected cuda or cuda:N (--allow-cpu runs on the CPU without CUDA)")
    if not torch.cuda.is_available():
        if not args.allow_cpu:
            print(f"gpu_smoke: no CUDA device (torch {torch.__version__}, CUDA "
                  f"{torch.version.cuda or 'not built'}): nothing checked; --allow-cpu runs the steps on the CPU")
            return 0
        device = "cpu"
    elif ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        p.error(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    steps = STEPS
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in {s.name for s in STEPS}]
        if unknown:
            p.error(f"--only: unknown step {unknown[0]!r}")
        steps = tuple(s for s in STEPS if s.name in wanted)

    out = (args.out or ROOT / "runs" / "gpu-smoke" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "steps").mkdir(exist_ok=True)
    print(f"gpu_smoke on {device}: {describe_machine(device)}")
    print(f"output: {out}\n", flush=True)

    t_start = time.perf_counter()
    results: list[Result] = []
    for step in steps:
        left = args.time_limit - (time.perf_counter() - t_start)
        if left < 10:
            why = f"not run: less than 10 s of the --time-limit ({args.time_limit:.0f} s) left"
            step_results = [Result(n, TIMEOUT, why) for n in step.results]
        else:
            timeout = min(step.timeout_cuda if device.startswith("cuda") else step.timeout_cpu, left)
            step_results, _ = run_step(step, device, out, timeout)
        for r in step_results:
            print(f"[{r.status:<7}] {r.name:<18} {r.seconds:6.1f} s  {r.detail}")
            for line in r.lines:
                print(f"{'':29}{line}")
        sys.stdout.flush()
        results.extend(step_results)
    total = time.perf_counter() - t_start

    counts = Counter(r.status for r in results)
    ok = all(r.status in (PASS, SKIP) for r in results)
    (out / "summary.json").write_text(json.dumps({"device": device, "ok": ok, "total_seconds": total,
                                                  "results": [asdict(r) for r in results]}, indent=2, default=str))
    print(f"\n{'ALL PASSED' if ok else 'FAILED'} on {device} in {total:.1f} s: "
          + ", ".join(f"{counts[s]} {s}" for s in (PASS, FAIL, TIMEOUT, SKIP) if counts[s])
          + f" (logs and outputs in {out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
