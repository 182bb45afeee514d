"""Config machinery (hyperrl.config) and CLI plumbing (hyperrl.cli)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import pytest
import torch

from hyperrl import cli
from hyperrl.cli import main_guard, make_parser, parse_device
from hyperrl.config import (
    ConfigError,
    apply_overrides,
    check_config_class,
    config_docs,
    config_keys,
    dump_yaml,
    from_dict,
    load_yaml_config,
    opt,
    roundtrip,
    save_config,
    to_dict,
)
from hyperrl.errors import HyperrlError


# ---- example configs: two levels of nesting ------------------------------------------
@dataclass(frozen=True)
class OptimConfig:
    lr: float = opt(3e-4, "Adam learning rate.", min=0.0)
    eps: float = opt(1e-8, "Adam epsilon.", min=0.0)
    betas: tuple[float, float] = opt((0.9, 0.999), "Adam betas.", min=0.0, max=1.0)


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = opt((64, 64), "Hidden layer widths.", min=1)
    activation: str = opt("tanh", "Activation function.", choices=("tanh", "relu"))
    kind: Literal["mlp", "hyper"] = opt("hyper", "Policy network kind.")
    layer_norm: bool = opt(False, "Use LayerNorm in hidden layers.")
    optim: OptimConfig = opt(OptimConfig, "Optimiser settings.")


@dataclass(frozen=True)
class PPOConfig:
    clip: float = opt(0.2, "PPO clip range.", min=0.0, max=1.0)
    epochs: int = opt(4, "Optimisation epochs per rollout.", min=1)
    target_kl: Optional[float] = opt(None, "Stop epochs early above this KL (null: never).")
    n_steps: int = opt(128, "Rollout length per env.", min=1)
    batch_size: int = opt(64, "Minibatch size.", min=1)

    def __post_init__(self) -> None:
        if self.batch_size > self.n_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n_steps ({self.n_steps})")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = opt(0, "Random seed.")
    total_steps: int = opt(100_000, "Environment steps to train for.", min=1)
    run_name: Optional[str] = opt(None, "Run folder name (null: generated).")
    model: ModelConfig = opt(ModelConfig, "Policy network.")
    ppo: PPOConfig = opt(PPOConfig, "PPO hyperparameters.")


def _write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


# ---- declaring and building -----------------------------------------------------------
def test_defaults():
    cfg = TrainConfig()
    assert cfg.model.hidden == (64, 64)
    assert cfg.model.optim.lr == 3e-4
    assert cfg.ppo.target_kl is None
    assert from_dict(TrainConfig, {}) == cfg
    assert from_dict(TrainConfig, None) == cfg
    hash(cfg)  # frozen + tuples: hashable
    check_config_class(TrainConfig)


def test_frozen():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.optim.lr = 1.0  # type: ignore[misc]


def test_opt_rejects_bad_declarations():
    with pytest.raises(TypeError):
        opt(1, "")
    with pytest.raises(ValueError):
        opt(5, "out of range", max=1)
    with pytest.raises(TypeError):
        opt({"a": 1}, "mapping default")
    assert opt([1, 2], "list default").default == (1, 2)


def test_check_config_class_flags_undocumented_keys():
    @dataclass(frozen=True)
    class Bad:
        x: int = 3

    with pytest.raises(TypeError, match="x: no doc"):
        check_config_class(Bad)


def test_load_yaml(tmp_path):
    p = _write(
        tmp_path,
        """
seed: 7
model:
  hidden: [32, 16]
  activation: relu
  optim:
    lr: 1e-3        # YAML 1.1 reads this as a string
    eps: 1.0e-6
ppo:
  target_kl: 0.02
  clip: 1           # int accepted for float
""",
    )
    cfg = load_yaml_config(TrainConfig, p)
    assert cfg.seed == 7
    assert cfg.model.hidden == (32, 16)
    assert cfg.model.activation == "relu"
    assert cfg.model.optim.lr == pytest.approx(1e-3) and isinstance(cfg.model.optim.lr, float)
    assert cfg.model.optim.eps == pytest.approx(1e-6)
    assert cfg.ppo.clip == 1.0 and isinstance(cfg.ppo.clip, float)
    assert cfg.ppo.target_kl == pytest.approx(0.02)
    assert cfg.ppo.epochs == 4  # untouched default
    assert cfg.model.optim.betas == (0.9, 0.999)


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_yaml_config(TrainConfig, _write(tmp_path, "")) == TrainConfig()
    assert load_yaml_config(TrainConfig, _write(tmp_path, "model:\n")) == TrainConfig()


@pytest.mark.parametrize(
    "text, value",
    [("1e-3", 1e-3), ("2E5", 2e5), ("1.5e3", 1500.0), ("-1e-2", -1e-2), (".5e1", 5.0)],
)
def test_scientific_strings_accepted_for_float(text, value):
    cfg = from_dict(TrainConfig, {"ppo": {"target_kl": text}})
    assert isinstance(cfg.ppo.target_kl, float)
    assert cfg.ppo.target_kl == pytest.approx(value)


def test_scientific_and_integral_float_for_int():
    assert from_dict(TrainConfig, {"total_steps": "1e6"}).total_steps == 1_000_000
    assert from_dict(TrainConfig, {"total_steps": 2.0e6}).total_steps == 2_000_000
    with pytest.raises(ConfigError, match="total_steps.*expected int"):
        from_dict(TrainConfig, {"total_steps": "1.5e0"})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(TrainConfig, {"total_steps": 2.5})


def test_unknown_key_names_dotted_path(tmp_path):
    p = _write(tmp_path, "model:\n  optim:\n    lrr: 0.1\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml_config(TrainConfig, p)
    msg = str(ei.value)
    assert "unknown config key 'model.optim.lrr'" in msg
    assert "valid keys in 'model.optim': lr, eps, betas" in msg
    assert "did you mean 'model.optim.lr'" in msg
    assert str(p) in msg
    with pytest.raises(ConfigError, match="unknown config key 'sed'; valid top-level keys: seed"):
        from_dict(TrainConfig, {"sed": 1})


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"seed": True}, r"'seed': expected int, got True \(bool\)"),
        ({"seed": "3"}, r"'seed': expected int, got '3' \(str\)"),
        ({"ppo": {"clip": [0.1]}}, r"'ppo.clip': expected float, got \[0.1\] \(list\)"),
        ({"ppo": {"clip": True}}, r"'ppo.clip': expected float, got True"),
        ({"ppo": {"clip": 1.5}}, r"'ppo.clip': must be <= 1"),
        ({"ppo": {"clip": -0.1}}, r"'ppo.clip': must be >= 0"),
        ({"ppo": {"clip": float("nan")}}, r"'ppo.clip': expected a finite number, got nan"),
        ({"model": {"optim": {"lr": float("inf")}}}, r"'model.optim.lr': expected a finite number, got inf"),
        ({"ppo": {"target_kl": float("-inf")}}, r"'ppo.target_kl': expected a finite number, got -inf"),
        ({"ppo": {"epochs": 0}}, r"'ppo.epochs': must be >= 1"),
        ({"ppo": {"target_kl": "abc"}}, r"'ppo.target_kl': expected float \| null, got 'abc'"),
        ({"model": {"activation": "gelu"}}, r"'model.activation': must be one of 'tanh', 'relu'; got 'gelu'"),
        ({"model": {"kind": "rnn"}}, r"'model.kind': expected 'mlp' \| 'hyper', got 'rnn'"),
        ({"model": {"layer_norm": 1}}, r"'model.layer_norm': expected bool, got 1 \(int\)"),
        ({"model": {"hidden": 64}}, r"'model.hidden': expected list\[int\], got 64"),
        ({"model": {"hidden": [64, "x"]}}, r"'model.hidden\[1\]': expected int, got 'x'"),
        ({"model": {"hidden": [64, 0]}}, r"'model.hidden\[1\]': must be >= 1"),
        ({"model": {"optim": {"betas": [0.9]}}}, r"'model.optim.betas': expected 2 items"),
        ({"model": 3}, r"'model' is a section: expected a mapping"),
        ({"run_name": 12}, r"'run_name': expected str \| null, got 12"),
        ({"ppo": {"batch_size": 512}}, r"config section 'ppo': batch_size \(512\) must be <= n_steps"),
    ],
)
def test_bad_values_rejected(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(TrainConfig, data)


def test_config_error_is_hyperrl_error():
    assert issubclass(ConfigError, HyperrlError)


def test_missing_file_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml_config(TrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_yaml_config(TrainConfig, tmp_path)
    p = _write(tmp_path, "seed: 1\nmodel:\n  hidden: [1, 2\n  activation: relu\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:\d+:\d+: malformed YAML"):
        load_yaml_config(TrainConfig, p)
    p = _write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml_config(TrainConfig, p)


def test_duplicate_keys_rejected(tmp_path):
    p = _write(tmp_path, "seed: 1\nppo:\n  clip: 0.1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:4:1: malformed YAML: duplicate key 'seed' \(first defined on line 1\)"):
        load_yaml_config(TrainConfig, p)
    p = _write(tmp_path, "seed: 1\nppo:\n  clip: 0.1\n  clip: 0.2\n")
    with pytest.raises(ConfigError,
                       match=r"cfg\.yaml:4:3: malformed YAML: duplicate key 'ppo\.clip' \(first defined on line 3\)"):
        load_yaml_config(TrainConfig, p)


def _laughs(levels: int = 9, width: int = 9) -> list[str]:
    """``key: value`` items of nested anchors: ``levels`` of ``width`` aliases stand for width**levels nodes."""
    items = [f"x0: &l0 [{', '.join(['lol'] * width)}]"]
    return items + [f"x{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]


def test_alias_bomb_and_huge_file_refused_before_parsing(tmp_path):
    import time

    p = _write(tmp_path, "\n".join(_laughs()) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"cfg\.yaml:\d+:\d+: too many YAML aliases: the aliases up to 'x\d\[\d\]'"):
        load_yaml_config(TrainConfig, p)
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ConfigError, match=r"override .*too many YAML aliases"):  # --set shares the loader
        apply_overrides(TrainConfig(), ["model={" + ", ".join(_laughs()) + "}"])
    # a few aliases of small values are what anchors are for
    p = _write(tmp_path, "seed: &n 7\nppo: {epochs: *n}\n")
    assert load_yaml_config(TrainConfig, p).ppo.epochs == 7
    p = _write(tmp_path, "seed: 1\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: file too large: more than 1 MiB"):
        load_yaml_config(TrainConfig, p)


# ---- overrides -------------------------------------------------------------------------
def test_overrides():
    base = TrainConfig()
    cfg = apply_overrides(
        base,
        [
            "seed=5",
            "model.hidden=[32,32]",
            "model.layer_norm=true",
            "model.optim.lr=1e-3",
            "ppo.target_kl=0.05",
            "run_name=2024",  # YAML int, but the key is a string: raw text is used
        ],
    )
    assert cfg.seed == 5
    assert cfg.model.hidden == (32, 32)
    assert cfg.model.layer_norm is True
    assert cfg.model.optim.lr == pytest.approx(1e-3)
    assert cfg.ppo.target_kl == pytest.approx(0.05)
    assert cfg.run_name == "2024"
    assert base == TrainConfig()  # the original is untouched
    assert cfg.model.activation == base.model.activation  # siblings preserved
    back = apply_overrides(cfg, ["ppo.target_kl=null", "run_name=null"])
    assert back.ppo.target_kl is None and back.run_name is None
    assert apply_overrides(cfg, ["ppo.target_kl="]).ppo.target_kl is None
    assert apply_overrides(base, ["seed=1", "seed=2"]).seed == 2  # last wins
    assert apply_overrides(base, []) == base
    assert apply_overrides(base, None) == base


def test_override_section_mapping_merges():
    cfg = apply_overrides(TrainConfig(), ["model.activation=relu", "model={hidden: [8], optim: {lr: 0.5}}"])
    assert cfg.model.hidden == (8,)
    assert cfg.model.optim.lr == 0.5
    assert cfg.model.optim.eps == 1e-8  # deep merge keeps unspecified keys
    assert cfg.model.activation == "relu"


def test_override_errors():
    cfg = TrainConfig()
    with pytest.raises(ConfigError, match=r"^unknown config key 'ppo.lrr'; valid keys in 'ppo': clip, epochs"):
        apply_overrides(cfg, ["ppo.lrr=3"])
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        apply_overrides(cfg, ["modle.hidden=[1]"])
    for bad in ["ppo.clip", "=3", "ppo..clip=1", "ppo.=1"]:
        with pytest.raises(ConfigError, match="malformed override"):
            apply_overrides(cfg, [bad])
    with pytest.raises(ConfigError, match="'seed' holds a value of type int, not a section"):
        apply_overrides(cfg, ["seed.x=1"])
    with pytest.raises(ConfigError, match=r"'model.layer_norm': expected bool, got 'maybe'"):
        apply_overrides(cfg, ["model.layer_norm=maybe"])
    with pytest.raises(ConfigError, match=r"'ppo.clip': must be <= 1"):
        apply_overrides(cfg, ["ppo.clip=2"])
    with pytest.raises(ConfigError, match="malformed YAML"):
        apply_overrides(cfg, ["model.hidden=[1, 2"])
    with pytest.raises(ConfigError, match="'model' is a section; set its keys"):
        apply_overrides(cfg, ["model=null"])
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(cfg, ["ppo.batch_size=1000"])
    with pytest.raises(ConfigError, match=r"'model.activation': must be one of"):
        apply_overrides(cfg, ["model.activation=gelu"])


# ---- saving, round trip, docs -----------------------------------------------------------
def test_save_load_roundtrip(tmp_path):
    cfg = apply_overrides(
        TrainConfig(),
        ["model.hidden=[]", "model.optim.lr=1e-10", "run_name='yes'", "ppo.target_kl=0.01", "seed=-3"],
    )
    assert cfg.run_name == "yes"
    path = save_config(cfg, tmp_path / "run" / "config.yaml", header="resolved config")
    text = path.read_text()
    assert text.startswith("# resolved config\n")
    assert "# Adam learning rate." in text
    for key in ("seed", "hidden", "lr", "eps", "betas", "target_kl", "batch_size", "layer_norm"):
        assert f"{key}:" in text
    assert load_yaml_config(TrainConfig, path) == cfg
    assert roundtrip(cfg) == cfg
    plain = save_config(cfg, tmp_path / "plain.yaml", comments=False)
    assert "#" not in plain.read_text()
    assert load_yaml_config(TrainConfig, plain) == cfg


def test_to_dict_is_yaml_friendly():
    d = to_dict(TrainConfig())
    assert d["model"]["hidden"] == [64, 64]
    assert d["model"]["optim"]["betas"] == [0.9, 0.999]
    assert list(d) == ["seed", "total_steps", "run_name", "model", "ppo"]
    assert from_dict(TrainConfig, d) == TrainConfig()
    assert "hidden: [64, 64]" in dump_yaml(TrainConfig())


def test_config_docs_mentions_every_key():
    keys = config_keys(TrainConfig)
    assert "model.optim.lr" in keys and "ppo.target_kl" in keys and "model" in keys
    for fmt in ("text", "markdown"):
        docs = config_docs(TrainConfig, fmt=fmt)
        for key in keys:
            assert key in docs, (fmt, key)
    text = config_docs(TrainConfig)
    assert "model.optim.lr: float = 0.0003  [>= 0.0]" in text
    assert "Adam learning rate." in text
    assert "ppo.target_kl: float | null = null" in text
    assert "model.kind: 'mlp' | 'hyper' = hyper" in text
    assert "one of tanh, relu" in text


# ---- CLI plumbing -----------------------------------------------------------------------
def test_main_guard_hyperrl_error(capsys):
    @main_guard
    def main() -> None:
        print("partial output")
        raise ConfigError("unknown config key 'ppo.lrr'\nsecond line")

    with pytest.raises(SystemExit) as ei:
        main()
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: unknown config key 'ppo.lrr' second line\n"


def test_main_guard_keyboard_interrupt_and_passthrough(capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ei:
        main_guard(interrupted)()
    assert ei.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    def buggy() -> None:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError):
        main_guard(buggy)()
    assert main_guard(lambda x: x + 1)(1) == 2


def test_parser_error_is_one_line_plus_hint(capsys):
    parser = make_parser("hyperrl-train", "Train a policy.")
    parser.add_argument("--steps", type=int, default=10, help="steps")
    with pytest.raises(SystemExit) as ei:
        parser.parse_args(["--steps", "x"])
    assert ei.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: argument --steps: invalid int value")
    assert lines[1] == "run 'hyperrl-train --help' for usage"


def test_parse_device(monkeypatch):
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")
    for bad in ["gpu", "cuda:x", "cuda:", "tpu:0", ""]:
        with pytest.raises(HyperrlError, match="invalid --device"):
            parse_device(bad)

    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    assert parse_device("auto") == torch.device("cpu")
    with pytest.raises(HyperrlError, match="^--device cuda requested but CUDA is not available$"):
        parse_device("cuda")
    with pytest.raises(HyperrlError, match="CUDA is not available"):
        parse_device("cuda:0")

    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.torch.cuda, "device_count", lambda: 2)
    assert parse_device("auto") == torch.device("cuda")
    assert parse_device("cuda") == torch.device("cuda")
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(HyperrlError, match="only 2 CUDA device"):
        parse_device("cuda:2")


@pytest.mark.parametrize("item", ["model.optim.lr=.inf", "model.optim.lr=-.inf", "ppo.clip=.nan",
                                  "ppo.target_kl=.inf"])
def test_set_refuses_non_finite_numbers(item):
    # YAML reads `.inf` / `.nan` as floats; the shared coercion refuses them for every config
    # class (an infinite learning rate would only surface as NaN losses mid-run).
    with pytest.raises(ConfigError, match=r"expected a finite number"):
        apply_overrides(TrainConfig(), [item])


def test_real_train_config_refuses_infinite_lr():
    from hyperrl.train_config import TrainConfig as RealTrainConfig

    with pytest.raises(ConfigError, match=r"config key 'ppo.lr': expected a finite number, got inf"):
        apply_overrides(RealTrainConfig(), ["ppo.lr=.inf"])


def test_configs_built_in_python_are_checked_like_loaded_ones():
    """Every config class derives from Checked: direct construction enforces the declared
    types and ranges (no second, hand-written check beside the declarations)."""
    from hyperrl.adapt import AdaptConfig
    from hyperrl.train_config import EnvConfig, PPOConfig
    from hyperrl.train_config import TrainConfig as RealTrainConfig

    with pytest.raises(ConfigError, match=r"'lr': expected a finite number, got inf"):
        PPOConfig(lr=float("inf"))
    with pytest.raises(ConfigError, match=r"'target_kl': must be > 0.0; got -1.0"):
        PPOConfig(target_kl=-1.0)
    with pytest.raises(ConfigError, match=r"'num_envs': expected int, got 1.5"):
        EnvConfig(num_envs=1.5)
    with pytest.raises(ConfigError, match=r"'elite_frac': must be <= 1.0; got 5.0"):
        AdaptConfig(elite_frac=5.0)
    with pytest.raises(ValueError, match=r"ppo.num_minibatches \(8\) must be <= env.num_envs \(4\)"):
        RealTrainConfig(env=EnvConfig(num_envs=4), ppo=PPOConfig(num_minibatches=8))
    # overrides are applied together, then checked: no order of --set items is refused midway
    cfg = apply_overrides(RealTrainConfig(), ["env.num_envs=4", "ppo.num_minibatches=2"])
    assert (cfg.env.num_envs, cfg.ppo.num_minibatches) == (4, 2)
    with pytest.raises(ConfigError, match=r"ppo.num_minibatches \(8\) must be <= env.num_envs \(4\)"):
        apply_overrides(RealTrainConfig(), ["ppo.num_minibatches=8", "env.num_envs=4"])


def test_main_guard_turns_an_allocation_failure_into_one_line(capsys):
    from hyperrl.cli import main_guard

    def oom(_argv=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 8589934592 bytes. Error code 12")

    with pytest.raises(SystemExit) as exc:
        main_guard(oom)()
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: out of memory (tried to allocate 8.0 GiB); use fewer envs, variants, episodes or "
                     "steps per rollout, or smaller networks"]

    def bug(_argv=None):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # a real bug keeps its traceback
        main_guard(bug)()
