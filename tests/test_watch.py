"""The engine records the watched prompts' predictions as the model learns: the run's timeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmstudio_app.cli import commands as cli
from lmstudio_app.errors import CheckpointError, ConfigError
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.timeline import load_timeline
from lmstudio_app.training import watch
from lmstudio_app.training.trainer import Trainer
from lmstudio_app.training.watch import WatchedPrompt, Watcher


def train(config, registry, run_dir, **kwargs) -> Trainer:
    trainer = Trainer(config, registry, run_dir, **kwargs)
    for _ in trainer.steps():
        pass
    return trainer


def test_a_run_records_its_prompts_at_step_0_and_every_evaluation(home, registry, tiny_config, text_file, tmp_path):
    tiny_config.data.files = [str(text_file)]
    trainer = train(tiny_config, registry, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    # No prompts were configured and no plugin knows this text: a few come from the validation text,
    # each with the text that follows it, and the run's config keeps them for a resume or a viewer.
    saved = run.load_config().watch
    assert saved.prompts == trainer.config.watch.prompts and 1 <= len(saved.prompts) <= watch.DEFAULT_PROMPTS
    assert len(saved.targets) == len(saved.prompts) and all(saved.targets)
    val_text = trainer.tokenizer.decode(trainer.corpus.val.tolist())
    assert all(p + t in val_text for p, t in zip(saved.prompts, saved.targets))
    records = run.timeline.read()
    assert [r["step"] for r in records] == [0, 6, 10, 12]  # evaluations every 6 steps, weights kept at 10
    # The last record is what the final model says (probabilities, entropy, the true token's p and rank).
    predictor = trainer.predictor()
    for prompt, target, entry in zip(saved.prompts, saved.targets, records[-1]["prompts"]):
        pred = predictor.next_token(prompt, k=tiny_config.watch.top_k)
        assert [i for i, _ in entry["top"]] == [c.id for c in pred.candidates]
        assert [p for _, p in entry["top"]] == pytest.approx([c.prob for c in pred.candidates], abs=1e-6)
        assert entry["entropy"] == pytest.approx(pred.entropy, abs=1e-5)
        target_id = trainer.tokenizer.encode(prompt + target)[-1]
        assert entry["target_p"] == pytest.approx(float(pred.probs[target_id]))
        assert entry["target_rank"] == int((pred.probs > pred.probs[target_id]).sum()) + 1
    # The untrained model knew nothing: the true tokens were less likely at step 0 than at the end.
    first = np.mean([e["target_p"] for e in records[0]["prompts"]])
    last = np.mean([e["target_p"] for e in records[-1]["prompts"]])
    assert last > first


def test_configured_prompts_are_watched_and_a_resume_continues_the_timeline(home, registry, tiny_config,
                                                                            text_file, tmp_path):
    tiny_config.data.files = [str(text_file)]
    tiny_config.watch.prompts = ["the cat sat on the", "the dog"]
    train(tiny_config, registry, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    # A record past the last checkpoint (as if the process was killed right after writing it)
    # is dropped on resume and recorded again: the history has no duplicate and no gap.
    run.timeline.append({"step": 13, "prompts": []})
    resumed = Trainer(None, registry, tmp_path / "run", resume=True)
    resumed.config.train.max_steps = 24
    for _ in resumed.steps():
        pass
    steps = [r["step"] for r in run.timeline.read()]
    assert steps == [0, 6, 10, 12, 18, 20, 24]
    assert run.load_config().watch.prompts == ["the cat sat on the", "the dog"]


def test_the_timeline_stays_bounded_and_keeps_the_whole_run(tmp_path, monkeypatch, registry, tiny_config,
                                                            text_file):
    monkeypatch.setattr(watch, "MAX_RECORDS", 8)
    tiny_config.data.files = [str(text_file)]
    trainer = Trainer(tiny_config, registry, write_run=False)
    run = RunDir.create(tmp_path / "log", tiny_config)
    watcher = Watcher([WatchedPrompt("the cat")], trainer.tokenizer, 3, log=run.timeline)
    predictor = trainer.predictor()
    recorded = 0
    for step in range(0, 401, 10):  # 41 evaluations
        if watcher.due(step):
            watcher.record(step, predictor)
            recorded += 1
        assert len(run.timeline.read()) < 8
    steps = [r["step"] for r in run.timeline.read()]
    assert steps[0] == 0 and steps[-1] >= 300 and steps == sorted(steps)  # thinned, not cut off
    assert recorded < 41 and watcher.every > 1


def test_the_cli_prints_the_history_and_says_what_an_older_run_lacks(home, registry, tiny_config, text_file,
                                                                      tmp_path, capsys):
    tiny_config.data.files = [str(text_file)]
    tiny_config.watch.prompts = ["the cat sat on the", "the dog"]
    trainer = train(tiny_config, registry, tmp_path / "run")
    assert cli.main(["timeline", str(tmp_path / "run"), "the dog", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["prompts"]
    assert [p["prompt"] for p in shown] == ["the dog"]
    records = RunDir.open(tmp_path / "run").timeline.read()
    assert [s["step"] for s in shown[0]["steps"]] == [r["step"] for r in records]
    last = shown[0]["steps"][-1]["top"][0]
    assert last["text"] == trainer.tokenizer.token_string(last["id"])
    assert cli.main(["timeline", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "'the cat sat on the'" in text and "'the dog'" in text
    assert cli.main(["timeline", str(tmp_path / "run"), "the bird"]) == 2
    assert "not a watched prompt" in capsys.readouterr().err
    (tmp_path / "run" / "timeline.jsonl").unlink()  # as a run trained before timelines were recorded
    with pytest.raises(CheckpointError, match="no timeline recorded"):
        load_timeline(RunDir.open(tmp_path / "run"))
    assert cli.main(["timeline", str(tmp_path / "run")]) == 1
    assert "no timeline recorded" in capsys.readouterr().err


def test_targets_must_match_the_prompts(tiny_config):
    from lmstudio_app.config import config_from_dict

    raw = tiny_config.to_dict()
    raw["watch"] = {"prompts": ["a", "b"], "targets": ["x"]}
    with pytest.raises(ConfigError, match="targets"):
        config_from_dict(raw)


def test_on_the_demo_grammar_the_demo_prompts_are_watched_against_the_truth(home, registry, tiny_config, tmp_path):
    from lmstudio_app.inference.truth import token_truth
    from lmstudio_app.resources import demo_corpus_path

    text = demo_corpus_path().read_text(encoding="utf-8")[:30_000]
    corpus = tmp_path / "demo-part.txt"
    corpus.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    tiny_config.data.files = [str(corpus)]
    trainer = train(tiny_config, registry, tmp_path / "run")
    spec = registry.truths()["demo"]
    assert trainer.truth is not None and trainer.config.watch.prompts == list(spec.prompts)
    run = RunDir.open(tmp_path / "run")
    records = run.timeline.read()
    truth = token_truth(spec, trainer.tokenizer)
    final = trainer.predictor()
    for prompt, entry in zip(spec.prompts, records[-1]["prompts"]):
        expected = truth.kl(truth.next_token(prompt), final.next_token(prompt).probs)
        assert entry["kl_to_truth"] == pytest.approx(expected, rel=1e-6)
    # The mean over the prompts is also in the evaluation's metrics, for the loss plot.
    by_step = {r["step"]: r for r in run.read_metrics() if "val_loss" in r}
    evaluated = [r for r in records if r["step"] in by_step]
    assert len(evaluated) == len(by_step)  # every evaluation has its record, also one at a kept step
    for record in evaluated:
        assert by_step[record["step"]]["kl_to_truth"] == pytest.approx(record["kl_to_truth"])
    assert records[-1]["kl_to_truth"] < records[0]["kl_to_truth"]  # it learned the grammar's odds
