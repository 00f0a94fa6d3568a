"""Training metrics for other tools: TensorBoard event files and CSV tables.

The engine logs one record per reported step to ``metrics.jsonl`` (``step``, ``elapsed_s``,
``train_loss``, ``lr``, ``tokens_per_s``, and ``val_loss``/``sample`` on evaluation steps).
:class:`TensorBoardSink` turns those records into TensorBoard scalars as training runs (it is a
``Trainer.run(on_step=...)`` callback), :func:`tensorboard_from_metrics` converts a finished
run's file, and :func:`write_metrics_csv` writes the table the GUI's "Export CSV" saves.
TensorBoard is optional: without it the sink raises a one-line error saying what to install.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ..atomic_files import atomic_write_text
from ..errors import CheckpointError, ExportError, MissingPackageError
from .folder import RunDir

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11 on; torch depends on typing_extensions

TENSORBOARD_MISSING = (
    "TensorBoard logging needs the optional package: pip install 'lmstudio-app[tensorboard]'"
)
# Scalars written to TensorBoard, under the same names as in metrics.jsonl and the CSV.
SCALARS = ("train_loss", "val_loss", "val_bpb", "lr", "tokens_per_s", "grad_norm")
# CSV columns come in this order; other numeric keys follow in the order they first appear.
CSV_COLUMNS = ("step", "elapsed_s", "train_loss", "val_loss", "lr", "tokens_per_s", "tokens_seen",
               "grad_norm", "max_steps")
EVENT_FILE_PREFIX = "events.out.tfevents."


class _HasRecord(Protocol):
    def to_record(self) -> dict[str, Any]: ...


def _as_record(metrics: Mapping[str, Any] | _HasRecord) -> Mapping[str, Any]:
    """A metrics.jsonl record from a record or a :class:`~lmstudio_app.training.control.StepMetrics`."""
    return metrics if isinstance(metrics, Mapping) else metrics.to_record()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_tensorboard() -> type:
    """torch's SummaryWriter; MissingPackageError with the install hint without TensorBoard.

    Call it before slow work (tokenizing, building the model) to fail at once.
    """
    try:
        import tensorboard  # noqa: F401  # torch's writer needs it; import it to fail early and clearly
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingPackageError(TENSORBOARD_MISSING) from None
    return SummaryWriter


class TensorBoardSink:
    """Writes each metrics record as TensorBoard scalars (and samples as text) into ``log_dir``.

    ``purge_step``: a resumed run re-logs steps from its checkpoint on; pass the first step it
    will log so TensorBoard hides what the interrupted run logged from there on.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        writer_class = require_tensorboard()
        self.log_dir = Path(log_dir)
        try:
            self.writer = writer_class(log_dir=str(self.log_dir), purge_step=purge_step)
        except OSError as exc:
            reason = exc.strerror or exc
            raise ExportError(f"{self.log_dir}: cannot write TensorBoard logs ({reason})") from None

    def write(self, metrics: Mapping[str, Any] | _HasRecord, walltime: float | None = None) -> None:
        """Log one record's scalars at its ``step``; ``walltime`` defaults to now."""
        record = _as_record(metrics)
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ExportError(f"metrics record without an integer step: {dict(record)!r:.80}")
        for key in SCALARS:
            value = record.get(key)
            if _is_number(value) and math.isfinite(value):
                self.writer.add_scalar(key, float(value), global_step=step, walltime=walltime)
        sample = record.get("sample")
        if isinstance(sample, str) and sample:
            # Markdown would eat the sample's line breaks and spaces; a code block keeps them.
            self.writer.add_text("sample", "    " + sample.replace("\n", "\n    "), global_step=step,
                                 walltime=walltime)

    __call__ = write  # so a sink is a Trainer.run(on_step=...) callback

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def tensorboard_from_metrics(
    run_dir: str | Path, log_dir: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """Convert a run's metrics.jsonl into TensorBoard event files; return the log folder.

    The log folder defaults to ``<run>/tensorboard``. If it already holds event files they are
    replaced with ``overwrite``, else refused (TensorBoard would show every step twice).
    """
    run = RunDir.open(run_dir)
    out = Path(log_dir) if log_dir is not None else run.path / "tensorboard"
    require_tensorboard()  # say what to install before touching anything
    old = sorted(out.glob(EVENT_FILE_PREFIX + "*")) if out.is_dir() else []
    if old and not overwrite:
        raise ExportError(
            f"{out}: already holds TensorBoard event files; pick another folder or overwrite them"
        )
    records = run.read_metrics()
    if not records:
        raise CheckpointError(f"{run.metrics_path}: no metrics yet — train the run first")
    for path in old:
        path.unlink()
    try:
        # Wall times rebuilt from training time, so TensorBoard's "relative" axis shows it.
        origin = run.metrics_path.stat().st_mtime - max(float(r.get("elapsed_s", 0.0)) for r in records)
    except OSError:
        origin = 0.0
    with TensorBoardSink(out) as sink:
        for record in records:
            elapsed = record.get("elapsed_s")
            sink.write(record, walltime=origin + float(elapsed) if _is_number(elapsed) else None)
    return out


def metrics_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The numeric keys of ``records``: the known ones in :data:`CSV_COLUMNS` order, then the rest."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if _is_number(value):
                seen.setdefault(key)
    known = [c for c in CSV_COLUMNS if c in seen]
    return known + [c for c in seen if c not in CSV_COLUMNS]


def write_metrics_csv(
    records: Iterable[Mapping[str, Any] | _HasRecord], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Write metrics records as a CSV table (one row per record, blank where a value is missing).

    ``columns`` defaults to every numeric key (text such as samples is left out). Floats keep
    full precision. The file is replaced atomically; returns its path.
    """
    rows = [_as_record(r) for r in records]
    cols = list(columns) if columns is not None else metrics_columns(rows)
    if not cols:
        raise ExportError(f"{path}: no metrics to write")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in cols])
    target = Path(path)
    try:
        atomic_write_text(target, buffer.getvalue())
    except OSError as exc:
        raise ExportError(f"{target}: cannot write the CSV file ({exc.strerror or exc})") from None
    return target


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)
