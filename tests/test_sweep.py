"""Issue 12, item 5: sweeps (``lmstudio sweep``, training/sweep.py) and the learning-rate finder
(``lmstudio lr-find``, training/lr_finder.py). Every run is really trained: the tiny char/1-layer
config of conftest.py, 6 to 12 steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmstudio_app.cli.commands import main as cli_main
from lmstudio_app.config import load_config
from lmstudio_app.errors import CheckpointError, ConfigError
from lmstudio_app.runs.folder import CONFIG_FILE, RunDir
from lmstudio_app.runs.index import read_summary
from lmstudio_app.training.lr_finder import find_lr, suggest
from lmstudio_app.training.sweep import SWEEP_FILE, Sweep, expand, parse_grid
from tests.conftest import TINY


@pytest.fixture
def config_file(tmp_path: Path, text_file: Path) -> Path:
    path = tmp_path / "tiny_sweep.toml"
    path.write_text(TINY.replace("[tokenizer]", f"[data]\nfiles = [{json.dumps(str(text_file))}]\n[tokenizer]", 1),
                    encoding="utf-8")
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmstudio: error: "), err
    return err[0]


# -- the grid ---------------------------------------------------------------------------------

def test_grids_expand_to_their_product_and_random_picks_a_subset():
    grids = [parse_grid("train.learning_rate=1e-3, 3e-3"), parse_grid("model.n_layer=1,2,3")]
    points = expand(grids)
    assert len(points) == 6 and points[0] == {"train.learning_rate": "1e-3", "model.n_layer": "1"}
    assert len({tuple(p.values()) for p in points}) == 6
    picked = expand(grids, random_picks=4, seed=3)
    assert len(picked) == 4 and all(p in points for p in picked) and picked == expand(grids, 4, seed=3)
    assert expand(grids, random_picks=60) == points  # more picks than points: all of them


@pytest.mark.parametrize("grid", ["train.learning_rate", "learning_rate=1e-3,3e-3", "nosuch.key=1,2",
                                  "train.learning_rate=1e-3,,3e-3", "train.learning_rate=", "model.n_layer=1,1"])
def test_bad_grid_is_a_one_line_error(grid, config_file, home, capsys):
    assert cli_main(["sweep", str(config_file), "--grid", grid, "--out", str(home / "s")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("lmstudio: error: --grid ") and grid.split("=")[0] in line
    assert not (home / "s").exists()  # nothing started


@pytest.mark.parametrize("grid", ["train.batch_size=4,0", "model.n_layer=1,0"])
def test_a_bad_value_is_named_before_any_training(grid, config_file, home, capsys):
    out = home / "s"
    assert cli_main(["sweep", str(config_file), "--grid", grid, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{grid.split('=')[0]}=0" in line and "minimum" in line and not out.exists()


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(config_file, home, registry, capsys):
    out = home / "s"  # unchecked here (the CLI's check refuses it): the model's own build fails
    config = load_config(config_file)
    config.train.max_steps = 2
    sweep = Sweep.open_or_create(out, config, [parse_grid("model.n_head=3,2")])
    assert sweep.run(registry) == [0, 1]
    statuses = [p["status"] for p in json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))["points"]]
    assert statuses == ["failed", "finished"]
    assert cli_main(["sweep", "--out", str(out)]) == 0  # resumed: the failed point is not retried
    captured = capsys.readouterr()
    assert "point 1/2 (model.n_head=3): skip" in captured.out
    assert "point 1 failed: " in captured.err and "divisible by n_head" in captured.err


def test_same_key_twice_and_random_zero_are_refused():
    with pytest.raises(ConfigError, match="given twice"):
        expand([parse_grid("model.n_layer=1,2"), parse_grid("model.n_layer=3")])
    with pytest.raises(ConfigError, match="--random"):
        expand([parse_grid("model.n_layer=1,2")], random_picks=0)


# -- a 2×2 sweep --------------------------------------------------------------------------------

def test_two_by_two_sweep_makes_four_runs_whose_table_matches_their_metrics_and_eval(config_file, home, capsys):
    out = home / "sweep"
    argv = ["sweep", str(config_file), "--set", "train.max_steps=6", "--grid", "train.learning_rate=1e-3,3e-3",
            "--grid", "model.n_layer=1,2", "--out", str(out), "--json"]
    assert cli_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    points = result["points"]
    assert result["keys"] == ["train.learning_rate", "model.n_layer"] and len(points) == 4
    assert len({p["run"] for p in points}) == 4
    for point in points:
        run = Path(point["run"])
        assert run.parent == out and point["status"] == "finished" and point["steps"] == 6
        lr, layers = point["values"]["train.learning_rate"], point["values"]["model.n_layer"]
        assert read_summary(run).name == f"sweep · learning_rate={lr}, n_layer={layers}"
        config = load_config(run / CONFIG_FILE)  # each point trained with its own values
        assert config.train.learning_rate == float(point["values"]["train.learning_rate"])
        assert config.model.params["n_layer"] == int(point["values"]["model.n_layer"])
        last_val = [m for m in _metrics(run) if m.get("val_loss") is not None][-1]
        assert point["final_val_loss"] == last_val["val_loss"] and point["final_val_bpb"] == last_val.get("val_bpb")
        assert point["wall_time_s"] == pytest.approx(_metrics(run)[-1]["elapsed_s"])
    # `lmstudio eval` of a run measures the same loss (same validation batches, same weights).
    assert cli_main(["eval", points[3]["run"], "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 6 and evaluated["val_loss"] == pytest.approx(points[3]["final_val_loss"], rel=1e-5)
    # Different settings really train differently.
    assert len({round(p["final_val_loss"], 6) for p in points}) == 4
    # The same folder again: nothing left to train, the same table, printed as text.
    assert cli_main(["sweep", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("skip") == 4 and text.count("finished") == 4 and f"{points[0]['final_val_loss']:.4f}" in text
    chart = text[text.index("best final val loss by value:"):].splitlines()
    swept = {"train.learning_rate": ("1e-3", "3e-3"), "model.n_layer": ("1", "2")}
    for key, values in swept.items():  # each value's row shows the best loss of the points that have it
        for offset, value in enumerate(values, 1):
            best = min(p["final_val_loss"] for p in points if p["values"][key] == value)
            assert chart[chart.index(f"  {key}") + offset].split()[:2] == [value, f"{best:.4f}"]


def test_an_interrupted_sweep_resumes_without_redoing_finished_points(config_file, home, registry):
    out = home / "sweep"
    config = load_config(config_file)
    sweep = Sweep.open_or_create(out, config, [parse_grid("train.learning_rate=1e-3,2e-3,3e-3")])

    def stop_mid_second(index, metrics):
        if index == 1 and metrics.step >= 6:
            sweep.stop()  # as Ctrl-C does: the point stops after this step, keeping a checkpoint

    assert sweep.run(registry, on_step=stop_mid_second) == [0, 1]
    statuses = [r.status for r in sweep.results()]
    assert statuses == ["finished", "stopped", "pending"]
    first_run = sweep.results()[0].run
    first_metrics = (first_run / "metrics.jsonl").read_bytes()
    stopped_at = sweep.results()[1].summary.step
    assert 6 <= stopped_at < 12
    saved = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))
    assert [p["status"] for p in saved["points"]] == ["finished", "stopped", "pending"]

    resumed = Sweep.open_or_create(out, None)  # a new process: only the folder
    seen = []
    assert resumed.run(registry, on_point=lambda i, v, what: seen.append((i, what))) == [1, 2]
    assert (0, "skip") in seen and (1, "resume") in seen and (2, "start") in seen
    assert (first_run / "metrics.jsonl").read_bytes() == first_metrics  # not trained again
    results = resumed.results()
    assert [r.status for r in results] == ["finished"] * 3 and all(r.summary.step == 12 for r in results)
    steps = [m["step"] for m in _metrics(results[1].run)]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # resumed after its last record, no repeats
    assert min(s for s in steps if s > stopped_at) > stopped_at


def test_resuming_with_other_grids_is_refused(config_file, home, capsys):
    out = home / "sweep"
    Sweep.open_or_create(out, load_config(config_file), [parse_grid("model.n_layer=1,2")])
    assert cli_main(["sweep", str(config_file), "--grid", "model.n_layer=1,3", "--out", str(out)]) == 2
    assert "other grids" in _one_error_line(capsys)
    assert cli_main(["sweep", "--out", str(home / "nothing")]) == 2
    assert SWEEP_FILE in _one_error_line(capsys)


# -- the learning-rate finder -------------------------------------------------------------------

def test_lr_finder_suggestion_is_on_the_descending_part(tiny_config, text_file, registry):
    tiny_config.data.files = [str(text_file)]
    result = find_lr(tiny_config, registry, start_lr=1e-4, end_lr=10.0, steps=40)
    lrs, smoothed = result.lrs, result.smoothed
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios and all(r == pytest.approx(ratios[0]) for r in ratios) and lrs[0] == pytest.approx(1e-4)
    # Adam at rates near 10 diverges: the test stops early, past 4x the best smoothed loss.
    assert len(lrs) < 40 and "exceeded" in result.stop_reason and smoothed[-1] > 4 * min(smoothed)
    i, low = result.suggestion_index, result.min_index
    assert i is not None and 0 < i < low and result.suggestion == lrs[i] < result.min_lr
    assert smoothed[i] > smoothed[low]  # above the minimum, on its way down
    assert smoothed[i + 1] < smoothed[i - 1]  # the curve falls through the suggested point
    assert smoothed[low] < smoothed[0] - 0.1  # the loss did fall: the rates were really applied


def test_suggest_picks_the_steepest_fall_before_the_minimum():
    lrs = [10 ** (-5 + 0.25 * k) for k in range(21)]
    # Falls gently, then steeply near index 9, bottoms out at 12, then blows up with a noisy dip
    # (index 14: a steeper fall than any before the minimum, which must not be picked).
    curve = [3.0 - 0.05 * k for k in range(8)] + [2.5, 2.0, 1.6, 1.5, 1.45, 6.0, 9.0, 2.0, 12, 15, 18, 21, 24]
    index, low = suggest(lrs, curve)
    assert low == 12 and index in (8, 9) and curve[index + 1] < curve[index - 1]
    rising = [1.0 + 0.1 * k for k in range(21)]
    assert suggest(lrs, rising) == (None, 0)  # never fell: no suggestion


def test_lr_find_cli_prints_the_suggestion_and_rejects_a_bad_range(config_file, home, capsys):
    assert cli_main(["lr-find", str(config_file), "--start-lr", "1e-4", "--end-lr", "10", "--steps", "30",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["suggestion"] is not None and result["suggestion_index"] < result["min_index"]
    assert math.isclose(result["suggestion"], result["lrs"][result["suggestion_index"]])
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # nothing written
    assert cli_main(["lr-find", str(config_file), "--start-lr", "1", "--end-lr", "1e-3"]) == 2
    assert "range" in _one_error_line(capsys)


def test_a_point_killed_before_its_first_checkpoint_starts_over_in_a_fresh_folder(config_file, home, registry):
    out = home / "s"
    config = load_config(config_file)
    config.train.max_steps = 2
    sweep = Sweep.open_or_create(out, config, [parse_grid("model.n_layer=1")])
    RunDir.create(out / "point-001", config)  # what a kill during preparation leaves: no checkpoint
    before = sorted((p.name, p.read_bytes()) for p in (out / "point-001").rglob("*") if p.is_file())
    assert Sweep.open_or_create(out, None).run(registry) == [0]
    (result,) = Sweep.open_or_create(out, None).results()
    assert result.run == out / "point-001~2" and result.status == "finished" and result.summary.step == 2
    after = sorted((p.name, p.read_bytes()) for p in (out / "point-001").rglob("*") if p.is_file())
    assert after == before  # the old folder is left as it was
    assert sweep.data["points"][0]["run"] == "point-001"  # the first object's view; the file moved on


def test_a_second_process_on_the_same_sweep_is_refused(config_file, home, registry):
    out = home / "s"
    config = load_config(config_file)
    config.train.max_steps = 2
    sweep = Sweep.open_or_create(out, config, [parse_grid("model.n_layer=1")])
    refused = []

    def try_a_second(index, metrics):
        with pytest.raises(CheckpointError) as info:
            Sweep.open_or_create(out, None).run(registry)
        refused.append(str(info.value))

    assert sweep.run(registry, on_step=try_a_second) == [0]
    assert refused and str(out) in refused[0] and "\n" not in refused[0]
    assert [r.status for r in sweep.results()] == ["finished"]  # the first one was not disturbed
