"""Metrics for other tools: the CSV table the GUI exports, and TensorBoard event files written live
or converted from a run's metrics.jsonl (read back with TensorBoard's own EventAccumulator)."""

from __future__ import annotations

import csv
import math
import sys

import pytest

from lmstudio_app.config import RunConfig
from lmstudio_app.errors import CheckpointError, ExportError, MissingPackageError
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.metrics_sinks import (
    TENSORBOARD_MISSING,
    TensorBoardSink,
    metrics_columns,
    require_tensorboard,
    tensorboard_from_metrics,
    write_metrics_csv,
)
from lmstudio_app.training.control import StepMetrics


def records(steps=range(10, 60, 10)):
    """What the engine writes: validation loss and a sample every other report."""
    out = []
    for step in steps:
        rec = {"step": step, "max_steps": 50, "elapsed_s": step * 0.1, "train_loss": 4.0 / step,
               "lr": 1e-3 / 3, "tokens_per_s": 1000.0 + step, "tokens_seen": step * 64}
        if step % 20 == 0:
            rec.update(val_loss=5.0 / step, sample=f"the cat\n  sat {step}")
        out.append(rec)
    return out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_csv_has_the_numeric_columns_in_order_and_blank_missing_values(tmp_path):
    path = write_metrics_csv(records(), tmp_path / "metrics.csv")
    rows = read_csv(path)
    assert rows[0] == ["step", "elapsed_s", "train_loss", "val_loss", "lr", "tokens_per_s", "tokens_seen",
                       "max_steps"]
    assert len(rows) == 6
    first, second = dict(zip(rows[0], rows[1])), dict(zip(rows[0], rows[2]))
    assert first["step"] == "10" and first["val_loss"] == "" and second["val_loss"] == repr(5.0 / 20)
    assert float(first["lr"]) == 1e-3 / 3  # full precision survives the round trip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temp file left


def test_csv_accepts_step_metrics_and_chosen_columns_and_replaces_the_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old", encoding="utf-8")
    metrics = [StepMetrics(step=5, max_steps=10, elapsed_s=1.5, train_loss=2.25, lr=0.001, tokens_per_s=99.0,
                           tokens_seen=320, grad_norm=0.5)]
    write_metrics_csv(metrics, path, columns=["step", "train_loss", "grad_norm", "val_loss"])
    assert read_csv(path) == [["step", "train_loss", "grad_norm", "val_loss"], ["5", "2.25", "0.5", ""]]


def test_csv_errors_are_one_line_and_name_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(ExportError, match=r"file/m.csv: cannot write the CSV file"):
        write_metrics_csv(records(), blocker / "m.csv")
    with pytest.raises(ExportError, match="no metrics to write"):
        write_metrics_csv([], tmp_path / "empty.csv")


def test_columns_put_known_keys_first_then_new_ones():
    assert metrics_columns([{"mfu": 0.3, "step": 1, "note": "text"}, {"train_loss": 2.0, "flag": True}]) == [
        "step", "train_loss", "mfu"]


def test_a_missing_tensorboard_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(MissingPackageError) as info:
        TensorBoardSink(tmp_path / "tb")
    assert str(info.value) == TENSORBOARD_MISSING
    assert "pip install 'lmstudio-app[tensorboard]'" in str(info.value)
    assert not (tmp_path / "tb").exists()
    with pytest.raises(MissingPackageError):
        require_tensorboard()  # what the CLI calls before any slow work
    run = RunDir.create(tmp_path / "run", RunConfig())
    run.append_metrics(records()[0])
    with pytest.raises(MissingPackageError):
        tensorboard_from_metrics(run.path)
    assert not (run.path / "tensorboard").exists()


@pytest.fixture
def accumulator():
    pytest.importorskip(
        "tensorboard", reason="tensorboard is not installed (pip install 'lmstudio-app[tensorboard]')"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(log_dir):
        acc = EventAccumulator(str(log_dir))
        acc.Reload()
        return acc

    return read


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_sink_writes_one_scalar_per_record_and_key(tmp_path, accumulator):
    with TensorBoardSink(tmp_path / "tb") as sink:
        for rec in records():
            sink(rec)
    acc = accumulator(tmp_path / "tb")
    assert set(acc.Tags()["scalars"]) == {"train_loss", "val_loss", "lr", "tokens_per_s"}
    assert [s for s, _ in scalars(acc, "train_loss")] == [10, 20, 30, 40, 50]
    assert dict(scalars(acc, "val_loss")) == pytest.approx({20: 0.25, 40: 0.125})
    assert all(math.isclose(v, 1e-3 / 3, rel_tol=1e-6) for _, v in scalars(acc, "lr"))
    samples = acc.Tensors("sample/text_summary")  # as a code block, so TensorBoard keeps line breaks
    assert [(e.step, e.tensor_proto.string_val) for e in samples] == [
        (20, [b"    the cat\n      sat 20"]), (40, [b"    the cat\n      sat 40"])]


def test_a_resumed_sink_hides_the_steps_it_logs_again(tmp_path, accumulator):
    with TensorBoardSink(tmp_path / "tb") as sink:
        for rec in records():
            sink.write(rec)
    with TensorBoardSink(tmp_path / "tb", purge_step=30) as sink:  # resumed from the step-20 checkpoint
        for rec in records(range(30, 80, 10)):
            sink.write({**rec, "train_loss": -1.0})
    values = dict(scalars(accumulator(tmp_path / "tb"), "train_loss"))
    assert sorted(values) == [10, 20, 30, 40, 50, 60, 70]
    assert values[20] == pytest.approx(0.2) and values[30] == -1.0


def test_metrics_jsonl_converts_to_event_files(tmp_path, accumulator):
    run = RunDir.create(tmp_path / "run", RunConfig())
    for rec in records():
        run.append_metrics(rec)
    log_dir = tensorboard_from_metrics(run.path)
    assert log_dir == run.path / "tensorboard"
    acc = accumulator(log_dir)
    assert dict(scalars(acc, "tokens_per_s")) == pytest.approx({s: 1000.0 + s for s in (10, 20, 30, 40, 50)})
    walltimes = [e.wall_time for e in acc.Scalars("train_loss")]
    assert walltimes[-1] - walltimes[0] == pytest.approx(4.0, abs=1e-3)  # training time, not conversion time

    with pytest.raises(ExportError, match="already holds TensorBoard event files"):
        tensorboard_from_metrics(run.path)
    tensorboard_from_metrics(run.path, overwrite=True)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in scalars(accumulator(log_dir), "train_loss")] == [10, 20, 30, 40, 50]


def test_a_run_without_metrics_cannot_be_converted(tmp_path, accumulator):
    run = RunDir.create(tmp_path / "run", RunConfig())
    with pytest.raises(CheckpointError, match="no metrics yet"):
        tensorboard_from_metrics(run.path, tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
