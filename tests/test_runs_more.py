"""Choosing the runs folder and the added folders from the CLI (``lmstudio runs --folder/--add/--remove``),
and that a new run (``lmstudio train`` without ``--out``) goes into the chosen folder; ``Sweep.run(parallel=K)``
and ``lmstudio sweep --parallel K`` (points at once as subprocesses, stop, resume)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from lmstudio_app.cli import commands as cli
from lmstudio_app.runs import location
from lmstudio_app.settings import default_runs_dir
from tests.conftest import TINY


@pytest.fixture(autouse=True)
def _isolated(home: Path) -> Path:
    return home


def test_runs_folder_option_stores_the_folder_and_new_runs_go_there(tmp_path: Path, capsys) -> None:
    chosen = tmp_path / "my runs"
    assert location.runs_folder() == default_runs_dir()
    assert cli.main(["runs", "--folder", str(chosen)]) == 0
    assert location.runs_folder() == chosen.absolute()
    assert str(chosen) in capsys.readouterr().out

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("max_steps = 12", "max_steps = 2") + f'[data]\nfiles = ["{text.as_posix()}"]\n',
                      encoding="utf-8")
    assert cli.main(["train", str(config)]) == 0
    made = [p for p in chosen.iterdir() if (p / "config.toml").exists()]
    assert len(made) == 1, list(chosen.iterdir())
    assert not default_runs_dir().exists() or not any(default_runs_dir().iterdir())
    capsys.readouterr()
    assert cli.main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [Path(r["path"]).name for r in listed] == [made[0].name]

    assert cli.main(["runs", "--folder", "default"]) == 0
    assert location.runs_folder() == default_runs_dir()


def test_add_and_remove_folders(tmp_path: Path, capsys) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    assert cli.main(["runs", "--add", str(extra)]) == 0
    assert location.added_folders() == [extra.absolute()]
    assert cli.main(["runs", "--remove", str(extra)]) == 0
    assert location.added_folders() == []


@pytest.mark.parametrize(("argv", "needle"), [
    (["runs", "--add", "{missing}"], "is not a folder"),
    (["runs", "--remove", "{missing}"], "is not one of the added folders"),
    (["runs", "--folder", "{file}"], "is not a folder"),
])
def test_bad_folder_options_are_one_line_errors(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    a_file = tmp_path / "a.txt"
    a_file.write_text("x", encoding="utf-8")
    argv = [a.format(missing=tmp_path / "nope", file=a_file) for a in argv]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0 and err.startswith("lmstudio: error:")
    assert location.added_folders() == [] and location.runs_folder() == default_runs_dir()


# -- lmstudio sweep --parallel K ------------------------------------------------------------------

@pytest.fixture
def sweep_config(tmp_path: Path, text_file: Path) -> Path:
    path = tmp_path / "tiny_sweep.toml"
    path.write_text(TINY.replace("[tokenizer]", f"[data]\nfiles = [{json.dumps(str(text_file))}]\n[tokenizer]", 1)
                    .replace("max_steps = 12", "max_steps = 4"), encoding="utf-8")
    return path


def test_parallel_sweep_runs_points_at_once_as_subprocesses(sweep_config: Path, home: Path, registry) -> None:
    from lmstudio_app.config import load_config
    from lmstudio_app.training.sweep import SWEEP_FILE, Sweep, parse_grid

    out = home / "par"
    sweep = Sweep.open_or_create(out, load_config(sweep_config), [parse_grid("model.n_head=3,2,4")])
    events: list[tuple[int, str]] = []
    trained = sweep.run(registry, on_point=lambda i, values, what: events.append((i, what)), parallel=2)
    assert trained == [0, 1, 2]
    # points 1 and 2 both started before either ended: they ran at once
    assert events[:2] == [(0, "start"), (1, "start")]
    points = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))["points"]
    assert [p["status"] for p in points] == ["failed", "finished", "finished"]
    assert "divisible by n_head" in points[0]["reason"]  # the child's one-line error, without its prefix
    for result in sweep.results()[1:]:
        metrics = [json.loads(line) for line in (result.run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line]
        last_val = [m for m in metrics if m.get("val_loss") is not None][-1]
        assert result.summary is not None and result.summary.step == 4
        assert result.summary.final_val_loss == last_val["val_loss"]
        assert result.summary.name.startswith("par · n_head=")
    # resumed: nothing left, the failed point not retried
    again: list[tuple[int, str]] = []
    assert sweep.run(registry, on_point=lambda i, values, what: again.append((i, what)), parallel=2) == []
    assert [w for _, w in again] == ["skip"] * 3


def test_parallel_must_be_one_or_more(sweep_config: Path, home: Path, capsys) -> None:
    argv = ["sweep", str(sweep_config), "--grid", "train.learning_rate=1e-3,3e-3", "--parallel", "0",
            "--out", str(home / "s")]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--parallel" in err and err.startswith("lmstudio: error:")
    assert not (home / "s").exists()


def test_stopping_a_parallel_sweep_stops_its_children_resumably(sweep_config: Path, home: Path, registry) -> None:
    from lmstudio_app.config import load_config
    from lmstudio_app.training.sweep import SWEEP_FILE, Sweep, parse_grid

    config = load_config(sweep_config)
    config.train.max_steps = 100_000  # never finishes by itself
    config.train.checkpoint_interval = 1
    out = home / "stop"
    sweep = Sweep.open_or_create(out, config, [parse_grid("train.learning_rate=1e-3,3e-3,1e-2")])
    started = threading.Event()

    def stop_once_training() -> None:
        started.wait(60)
        # Stop once both children have written a checkpoint: polling the files they write (no other
        # signal crosses the process boundary), bounded so a broken child cannot hang the test.
        runs = (out / "point-001", out / "point-002")
        end = time.monotonic() + 60
        while time.monotonic() < end and not all((p / "checkpoints").is_dir() and any((p / "checkpoints").iterdir())
                                                 for p in runs):
            time.sleep(0.05)
        sweep.stop()

    stopper = threading.Thread(target=stop_once_training)
    stopper.start()
    sweep.run(registry, on_point=lambda i, v, what: started.set() if i == 1 and what == "start" else None, parallel=2)
    stopper.join()
    points = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))["points"]
    assert [p["status"] for p in points[:2]] == ["stopped", "stopped"] and points[2]["status"] == "pending"
    assert not list(out.glob(".point-*"))  # the children's scratch files are gone
