"""Training FLOPs of a run, for the Compare panel's x axis: FLOPs = FLOPs per token × tokens seen.

FLOPs per token come from the run when it recorded them (``flops_per_token`` in its run.json or
outcome.json, or in a metrics record), else the standard estimate 6 × non-embedding parameters,
counted from the latest checkpoint's model.safetensors header (tensors named like token/position
embeddings left out). :func:`flops_per_token` says which one it used.
May import: ``runs.folder``, ``runs.index``, ``file_reads``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, LMStudioError
from .folder import RunDir
from .index import (
    MODEL_FILE,
    OUTCOME_FILE,
    _latest_checkpoint,
    _read_run_file,
    safetensors_header,
    tensor_values,
)

RECORDED, ESTIMATED = "recorded", "6 × non-embedding parameters"
# Token and position embedding tables: a lookup, not a matmul, so not in the 6N estimate.
_EMBEDDING = re.compile(r"(^|\.)(wte|wpe|tok_emb\w*|pos_emb\w*|embed\w*|embedding\w*)\.weight$")


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def non_embedding_parameters(model_file: Path) -> int | None:
    """Values in a model.safetensors, embedding tables left out (header only; None if unreadable)."""
    header = safetensors_header(model_file)
    return tensor_values(header, skip=_EMBEDDING.search) if header is not None else None


def flops_per_token(path: Path, records: list[dict[str, Any]] | None = None) -> tuple[float | None, str]:
    """``(FLOPs per token, source)`` for the run in ``path``: RECORDED, ESTIMATED, or (None, "")."""
    for name in (OUTCOME_FILE, None):
        try:
            info = _read_run_file(path, name) if name else _read_run_file(path)
        except CheckpointError:
            continue
        if (value := _positive(info.get("flops_per_token"))) is not None:
            return value, RECORDED
    for record in records or ():
        if (value := _positive(record.get("flops_per_token"))) is not None:
            return value, RECORDED
    try:
        run = RunDir.open(path)
    except (LMStudioError, OSError):
        return None, ""
    latest = _latest_checkpoint(run) if run.checkpoints_dir.is_dir() else None
    count = non_embedding_parameters(latest[0] / MODEL_FILE) if latest is not None else None
    return (6.0 * count, ESTIMATED) if count else (None, "")
