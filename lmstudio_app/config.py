"""Run configuration: dataclasses that round-trip through ``config.toml``.

A config has five sections: ``[data]``, ``[tokenizer]`` (``plugin`` + that plugin's params),
``[model]`` (``plugin`` + params), ``[train]`` and ``[watch]`` (the prompts whose predictions a
run records as it learns). Unknown keys and out-of-range values are
errors that name the key. Plugin params are validated against the plugin's params dataclass
(see :func:`validate_plugins`), the same dataclass the GUI builds its forms from.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import tomli_w

from .atomic_files import atomic_write_text
from .errors import ConfigError, LMStudioError, ParamError, cut, shown
from .file_reads import SMALL_FILE_LIMIT, read_bytes
from .params import build_params, param, params_to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from .registry import PluginRegistry


@dataclass
class DataConfig:
    files: list[str] = param([], help="Text files or folders (.txt, .md, ...); empty = the demo corpus")
    val_fraction: float = param(0.1, min=0.0, max=0.5, step=0.01, help="Share of the corpus held out for validation")
    val_split: str = param("end", choices=("end", "start"), help="Where the validation slice is cut from")


@dataclass
class TrainConfig:
    device: str = param("auto", choices=("auto", "cpu", "cuda", "mps"), help="auto = CUDA, then Apple MPS, then CPU")
    dtype: str = param("auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="Autocast precision; auto = bf16 where the hardware supports it")
    batch_size: int = param(12, min=1, max=4096, help="Sequences per optimiser step")
    grad_accum: int = param(1, min=1, max=1024, help="Micro-batches accumulated per step")
    max_steps: int = param(2000, min=1, max=10_000_000, help="Optimiser steps to train for")
    optimizer: str = param("adamw", choices=("adamw", "muon"),
                           help="muon = Muon for weight matrices, AdamW for the rest")
    learning_rate: float = param(1e-3, min=1e-7, max=10.0, log_scale=True, help="Peak AdamW learning rate")
    min_lr: float = param(1e-4, min=0.0, max=10.0, log_scale=True, help="Learning rate at the end of the decay")
    muon_lr: float = param(0.02, min=1e-5, max=10.0, log_scale=True, help="Peak Muon learning rate (muon only)")
    muon_momentum: float = param(0.95, min=0.0, max=0.999, step=0.01,
                                 help="Muon's momentum (muon only); short runs learn faster with 0.9")
    schedule: str = param("cosine", choices=("cosine", "linear", "constant", "wsd"),
                          help="Decay after warmup; wsd = constant then a linear warmdown")
    warmup_steps: int = param(100, min=0, max=1_000_000, help="Linear warmup steps")
    warmdown_fraction: float = param(0.4, min=0.0, max=1.0, help="Share of steps spent in the final decay (wsd)")
    weight_decay: float = param(0.1, min=0.0, max=10.0, help="AdamW weight decay on matrices")
    beta1: float = param(0.9, min=0.0, max=0.9999)
    beta2: float = param(0.99, min=0.0, max=0.99999)
    grad_clip: float = param(1.0, min=0.0, max=1000.0, help="Clip the gradient norm; 0 = off")
    eval_interval: int = param(250, min=1, max=10_000_000, help="Steps between validations")
    eval_batches: int = param(20, min=1, max=100_000, help="Batches averaged per validation")
    log_interval: int = param(10, min=1, max=1_000_000, help="Steps between metrics lines")
    checkpoint_interval: int = param(0, min=0, max=10_000_000,
                                     help="Steps between checkpoints; 0 = at each validation")
    sample_tokens: int = param(120, min=0, max=10_000, help="Tokens generated as a sample at each validation")
    seed: int = param(1337, min=0, max=2**31 - 1)
    compile: bool = param(False, help="torch.compile the model (pays off on long runs)")
    threads: int = param(0, min=0, max=1024, help="CPU threads; 0 = PyTorch's default")

    def validate(self) -> None:
        # The schedules decay from learning_rate to min_lr: a floor above the peak makes the rate
        # climb all through the run (a constant schedule never reads min_lr).
        if self.schedule != "constant" and self.min_lr > self.learning_rate:
            raise ParamError(
                f"train.min_lr = {self.min_lr:g} is above train.learning_rate = {self.learning_rate:g}, so the "
                f"{self.schedule} schedule would raise the rate as it decays; set train.min_lr at most "
                "train.learning_rate"
            )


@dataclass
class WatchConfig:
    prompts: list[str] = param([], help="Prompts whose next-token predictions are recorded at each evaluation; "
                                        "empty = chosen when the run starts (a synthetic corpus's own prompts, "
                                        "else a few from the validation text)")
    targets: list[str] = param([], help="The text that really follows each prompt ('' where unknown), "
                                        "for the true token's probability and rank")
    top_k: int = param(5, min=1, max=100, help="Next-token candidates recorded per prompt")

    def validate(self) -> None:
        if self.targets and len(self.targets) != len(self.prompts):
            raise ValueError(f"targets: {len(self.targets)} given for {len(self.prompts)} prompts; "
                             "give one per prompt ('' where unknown) or none")


@dataclass
class PluginChoice:
    """Which plugin to use and its params (validated later against the plugin's dataclass)."""

    plugin: str
    params: dict[str, Any] = field(default_factory=dict)


def _default_tokenizer() -> PluginChoice:
    return PluginChoice("char")


def _default_model() -> PluginChoice:
    return PluginChoice("gpt")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: PluginChoice = field(default_factory=_default_tokenizer)
    model: PluginChoice = field(default_factory=_default_model)
    train: TrainConfig = field(default_factory=TrainConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": params_to_dict(self.data),
            "tokenizer": {"plugin": self.tokenizer.plugin, **self.tokenizer.params},
            "model": {"plugin": self.model.plugin, **self.model.params},
            "train": params_to_dict(self.train),
            "watch": params_to_dict(self.watch),
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = ("data", "tokenizer", "model", "train", "watch")
MAX_PLUGIN_NAME = 200  # a name, not a text: longer is a mistake (and would fill every message quoting it)


def config_from_dict(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from parsed TOML; plugin params stay raw until :func:`validate_plugins`."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{cut(str(unknown[0]))}] (sections: {', '.join(SECTIONS)})")
    try:
        data = build_params(DataConfig, raw.get("data", {}), "data")
        train = build_params(TrainConfig, raw.get("train", {}), "train")
        watch = build_params(WatchConfig, raw.get("watch", {}), "watch")
    except ParamError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for section in SECTIONS:
        _check_depth(raw.get(section, {}), section, source)
    choices = {}
    for section, default in (("tokenizer", "char"), ("model", "gpt")):
        body = dict(raw.get(section, {}))
        plugin = body.pop("plugin", default)
        if not isinstance(plugin, str) or not plugin or len(plugin) > MAX_PLUGIN_NAME:
            raise ConfigError(f"{source}: {section}.plugin must be a plugin name, got {shown(plugin)}")
        choices[section] = PluginChoice(plugin, body)
    return RunConfig(data=data, tokenizer=choices["tokenizer"], model=choices["model"], train=train, watch=watch)


# Deeper than any config the app writes (a [section] of scalars and lists of strings is 2 levels);
# far below what makes parsing, printing or saving a value recurse out of the stack.
MAX_DEPTH = 8


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and tables, counting no further than ``limit + 1``."""
    if limit < 0 or not isinstance(value, (list, dict)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def _check_depth(body: Any, section: str, source: str) -> None:
    if not isinstance(body, dict):
        return
    for key, value in body.items():
        if _depth(value, MAX_DEPTH) > MAX_DEPTH:
            raise ConfigError(f"{source}: {section}.{cut(str(key))} nests lists or tables more than "
                              f"{MAX_DEPTH} levels deep; a setting is a number, text, or a list of them")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; every failure (syntax, nesting that overflows the parser, a number of
    thousands of digits) is a :class:`ConfigError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML ({cut(str(exc), 200)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML (lists or tables nested too deeply to read)") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        raise ConfigError(f"{source}: invalid TOML ({cut(str(exc), 200)})") from None


def read_toml(path: str | Path, what: str = "config file",
              error: type[LMStudioError] = ConfigError) -> dict[str, Any]:
    """A TOML file the app did not just write: a regular file of bounded size, UTF-8, parsed.

    Read through :mod:`file_reads`, so a FIFO, a device or a huge file is refused, not read.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():  # (a dangling or looping link: file_reads says which)
        raise error(f"{p}: {what} not found")
    data = read_bytes(p, what=what, max_bytes=SMALL_FILE_LIMIT, error=error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: cannot read {what.removesuffix(' file')} (not UTF-8 at byte {exc.start})") from None
    try:
        return parse_toml(text, str(p))
    except ConfigError as exc:
        raise error(str(exc)) from None


def parse_override(text: str) -> tuple[str, str, str]:
    """``section.key=value`` → (section, key, raw value)."""
    if "=" not in text:
        raise ConfigError(f"--set {shown(text)}: expected section.key=value")
    path, value = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {shown(text)}: expected section.key=value, e.g. train.max_steps=500")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"--set {shown(text)}: unknown section {shown(parts[0])} "
                          f"(sections: {', '.join(SECTIONS)})")
    return parts[0], parts[1], value.strip()


def _parse_toml_value(raw: str) -> Any:
    """Read a --set value as TOML if it parses (numbers, booleans, lists), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw  # as text: its key's own check then says what was expected
    except ValueError as exc:  # a number of thousands of digits
        raise ConfigError(f"--set value {shown(raw)}: not a number this app can read ({cut(str(exc), 60)})") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the raw TOML mapping with ``--set`` overrides applied."""
    out = {k: dict(v) for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        out.setdefault(section, {})[key] = _parse_toml_value(value)
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a config TOML (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        raw = read_toml(p, "config file")
    bad = [k for k, v in raw.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{source}: {cut(str(bad[0]))} must be a [section]")
    return config_from_dict(apply_overrides(raw, overrides), source)


def merge_config(base: RunConfig, raw: Mapping[str, Any], source: str = "preset") -> RunConfig:
    """Overlay a (partial) raw mapping, e.g. a preset without [data], on an existing config."""
    merged = base.to_dict()
    for section, body in raw.items():
        if section in ("tokenizer", "model") and "plugin" in body and body["plugin"] != merged[section]["plugin"]:
            merged[section] = {}  # another plugin: the old plugin's params do not apply
        merged.setdefault(section, {}).update(body)
    return config_from_dict(merged, source)


def load_preset(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Apply a preset TOML (sections [tokenizer], [model], [train]; no [data]) to ``base``."""
    p = Path(path)
    raw = read_toml(p, "preset file")
    bad = [k for k, v in raw.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{p}: {cut(str(bad[0]))} must be a [section]")
    return merge_config(base or RunConfig(), raw, str(p))


def validate_plugins(config: RunConfig, registry: PluginRegistry) -> tuple[Any, Any]:
    """Check that the plugins exist and their params are valid; return the params instances."""
    tok_spec = registry.tokenizer(config.tokenizer.plugin)
    model_spec = registry.model(config.model.plugin)
    try:
        tok_params = build_params(tok_spec.params, config.tokenizer.params, "tokenizer")
        model_params = build_params(model_spec.params, config.model.params, "model")
    except ParamError as exc:
        raise ConfigError(str(exc)) from None
    return tok_params, model_params


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), config.to_toml())


def copy_config(config: RunConfig) -> RunConfig:
    return config_from_dict(config.to_dict(), "copy")

