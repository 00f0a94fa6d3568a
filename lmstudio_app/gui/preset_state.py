"""Which preset the settings are, and what applying one does (the Training panel's preset combo).

A preset is applied over the built-in defaults, not over the current settings: applying
"default" after "fast-cpu" must also put back the optimiser, schedule and every other setting
the default preset leaves at its default (an overlay kept Muon). The data, the watched prompts
and the device the person chose stay. "default" is the app's startup configuration
(:func:`~lmstudio_app.session.default_config`: the bundled default preset, with the fast CPU
recipe's network and optimiser on a CPU), so a fresh window says "default" and applying it
gives back exactly what the app started with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from ..config import RunConfig, load_preset, validate_plugins
from ..errors import ConfigError, LMStudioError
from ..file_reads import read_text
from ..params import build_params, params_to_dict
from ..registry import PluginRegistry
from ..resources import list_presets, preset_path
from ..session import DEFAULT_PRESET, Session, default_config

CUSTOM_LABEL = "custom (edited)"
_SHOWN_TRAIN_KEYS = ("optimizer", "max_steps", "batch_size", "learning_rate", "schedule")


def preset_config(name_or_path: str | Path, base: RunConfig) -> RunConfig:
    """The config a preset gives: the preset over the built-in defaults (``default``: the
    startup config), with ``base``'s data, watched prompts and device."""
    name = str(name_or_path)
    if name == DEFAULT_PRESET:
        config = default_config()
    else:
        path = preset_path(name) if name in list_presets() else Path(name_or_path)
        config = load_preset(path, RunConfig())
    config.data, config.watch = base.data, base.watch
    config.train.device = base.train.device  # the device combo is the person's, not the preset's
    return config


def apply_preset(session: Session, name_or_path: str | Path) -> None:
    """Make the session's tokenizer, model and training settings exactly the preset's."""
    if session.run.state.active:
        raise ConfigError(f"{name_or_path}: stop the training before changing the settings")
    target = preset_config(name_or_path, session.config)
    validate_plugins(target, session.registry)  # a preset naming a missing plugin or a bad value
    session.set_tokenizer(target.tokenizer.plugin, target.tokenizer.params)
    session.set_model(target.model.plugin, target.model.params)
    session.set_train(params_to_dict(target.train))


def fingerprint(config: RunConfig, registry: PluginRegistry) -> tuple[Any, ...] | None:
    """What a preset decides, with every default filled in (None: a plugin or value is invalid)."""
    try:
        tokenizer = registry.tokenizer(config.tokenizer.plugin)
        model = registry.model(config.model.plugin)
        tok_params = params_to_dict(build_params(tokenizer.params, dict(config.tokenizer.params), "tokenizer"))
        model_params = params_to_dict(build_params(model.params, dict(config.model.params), "model"))
    except LMStudioError:
        return None
    train = {k: v for k, v in params_to_dict(config.train).items() if k != "device"}
    return (config.tokenizer.plugin, tuple(sorted(tok_params.items())), config.model.plugin,
            tuple(sorted(model_params.items())), tuple(sorted(train.items())))


def differences(config: RunConfig, preset: RunConfig) -> list[str]:
    """The settings of ``config`` that differ from ``preset`` (section.key), in a stable order."""
    out = []
    for section in ("tokenizer", "model"):
        mine, theirs = getattr(config, section), getattr(preset, section)
        if mine.plugin != theirs.plugin:
            out.append(f"{section}.plugin")
            continue
        keys = sorted(set(mine.params) | set(theirs.params))
        out += [f"{section}.{k}" for k in keys if mine.params.get(k) != theirs.params.get(k)]
    mine_t, theirs_t = params_to_dict(config.train), params_to_dict(preset.train)
    out += [f"train.{k}" for k in mine_t if k != "device" and mine_t[k] != theirs_t.get(k)]
    return out


class PresetTracker:
    """The bundled presets' configs (computed once) and which one the session's config is."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.names = list_presets()
        self._configs: dict[str, RunConfig] = {}
        self._prints: dict[str, tuple[Any, ...] | None] = {}
        for name in self.names:
            try:
                self._configs[name] = config = preset_config(name, session.config)
            except LMStudioError:
                continue  # a broken bundled preset: listed, never "active"
            self._normalize(config)
            self._prints[name] = fingerprint(config, session.registry)

    def _normalize(self, config: RunConfig) -> None:
        """Fill every plugin param's default in, so differences name only real changes."""
        registry = self.session.registry
        for section, lookup in (("tokenizer", registry.tokenizer), ("model", registry.model)):
            choice = getattr(config, section)
            try:
                choice.params = params_to_dict(build_params(lookup(choice.plugin).params, dict(choice.params), section))
            except LMStudioError:
                pass

    def active(self) -> str | None:
        """The preset the session's settings are exactly (None: edited since, or never a preset)."""
        mine = fingerprint(self.session.config, self.session.registry)
        if mine is None:
            return None
        for name in self.names:
            if self._prints.get(name) == mine:
                return name
        return None

    def edited_from(self) -> tuple[str, list[str]] | None:
        """The preset closest to the session's settings and what differs from it."""
        best: tuple[str, list[str]] | None = None
        config = RunConfig(data=self.session.config.data, tokenizer=self.session.config.tokenizer,
                           model=self.session.config.model, train=self.session.config.train)
        self._normalize(config)
        for name, preset in self._configs.items():
            diff = differences(config, preset)
            if best is None or len(diff) < len(best[1]):
                best = (name, diff)
        return best

    def description(self, name: str) -> str:
        """What a preset is and what it sets: its file's opening comment and its main settings."""
        config = self._configs.get(name)
        if config is None:
            return f"{name}: cannot be read"
        lines = [_header_comment(preset_path(name))]
        if name == DEFAULT_PRESET:
            lines.append("The startup configuration (on a CPU: with the fast CPU recipe's network and optimiser).")
        model = config.model.params
        shape = ", ".join(f"{k} {model[k]}" for k in ("n_layer", "n_head", "n_embd", "context_length") if k in model)
        train = params_to_dict(config.train)
        lines.append(f"Sets everything: tokenizer {config.tokenizer.plugin}; model {config.model.plugin}"
                     + (f" ({shape})" if shape else "") + "; "
                     + ", ".join(f"{k} {train[k]}" for k in _SHOWN_TRAIN_KEYS) + "; the rest at their defaults.")
        lines.append("Keeps the data, the watched prompts and the device.")
        return "\n".join(line for line in lines if line)


def _header_comment(path: Path) -> str:
    """The first comment paragraph of a preset file, joined into one text."""
    try:
        text = read_text(path, what="preset")  # bounded: a FIFO or /dev/zero named *.toml never hangs
        tomllib.loads(text)  # only a readable preset is described
    except (LMStudioError, tomllib.TOMLDecodeError, RecursionError):
        return ""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines).split(" A preset holds")[0].strip()
