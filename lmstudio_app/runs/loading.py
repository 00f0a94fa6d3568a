"""Rebuild a saved run's model: its config, its own tokenizer and a checkpoint's weights.

Opening a run folder never runs code from it: the config is TOML, the tokenizer JSON and the
weights safetensors; the model class comes from an installed plugin named in the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import RunConfig, validate_plugins
from ..devices import resolve_device
from ..errors import CheckpointError
from ..model_api import LanguageModel
from ..params import params_to_dict
from ..tokenizer import Tokenizer
from .checkpoints import latest_checkpoint, load_checkpoint, read_state, unusable_checkpoints_error
from .folder import RunDir
from .integrity import check_config_against_latest, check_config_matches_checkpoint
from .snapshots import load_snapshot

if TYPE_CHECKING:
    from ..registry import PluginRegistry


def load_run(
    run_dir: str | Path,
    registry: PluginRegistry,
    device: str = "auto",
    checkpoint: str | Path | None = None,
    step: int | None = None,
) -> tuple[RunConfig, LanguageModel, Tokenizer]:
    """Rebuild a run's model from its folder: config + tokenizer + the weights of the latest or
    given checkpoint, or of ``step`` (a snapshot, or a checkpoint still kept; see runs.snapshots)."""
    run = RunDir.open(run_dir)
    config = run.load_config()
    tokenizer = run.load_tokenizer()
    tok_params, model_params = validate_plugins(config, registry)
    settled = _settled(config, tok_params, model_params)
    if step is not None:  # a snapshot has no config of its own: the newest checkpoint's stands for it
        check_config_against_latest(run, settled)
        model = registry.build_model(config.model.plugin, model_params, tokenizer.vocab_size)
        load_snapshot(run, step, model)
        model.to(resolve_device(device)).eval()
        return config, model, tokenizer

    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run)
    if path is None:
        raise unusable_checkpoints_error(run) or CheckpointError(f"{run_dir}: no checkpoint yet — train the model first")
    # config.toml edited to another architecture would load the same shapes into another model.
    check_config_matches_checkpoint(run, settled, read_state(path), path)
    model = registry.build_model(config.model.plugin, model_params, tokenizer.vocab_size)
    load_checkpoint(path, model, map_location="cpu")
    model.to(resolve_device(device)).eval()
    return config, model, tokenizer


def _settled(config: RunConfig, tok_params: object, model_params: object) -> dict:
    """The config as training stored it: the plugins' params with every default filled in."""
    settled = config.to_dict()
    settled["tokenizer"] = {"plugin": config.tokenizer.plugin, **params_to_dict(tok_params)}
    settled["model"] = {"plugin": config.model.plugin, **params_to_dict(model_params)}
    return settled
