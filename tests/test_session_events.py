"""The session announces every change of its own state; the run controller its run's; no display needed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from lmstudio_app.errors import Cancelled, ConfigError, TrainingError
from lmstudio_app.session import Session
from lmstudio_app.training.control import StepMetrics, TrainingControl
from lmstudio_app.training.controller import RunController, RunState

EVENT_NAMES = ("corpus_changed", "tokenizer_changed", "corpus_tokenized", "data_config_changed",
               "model_config_changed", "train_config_changed", "model_changed", "run_loaded", "prompt_changed")


class Recorder:
    """Every event of a session (and of its run), in order."""

    def __init__(self, session: Session) -> None:
        self.seen: list[str] = []
        for name in EVENT_NAMES:
            getattr(session.events, name).connect(lambda *_args, name=name: self.seen.append(name))
        for name in ("state_changed", "started", "finished", "failed", "model_updated"):
            getattr(session.run.events, name).connect(lambda *args, name=name: self.seen.append(
                f"run.{name}" + (f":{args[0].value}" if name == "state_changed" else "")))

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_each_change_announces_what_changed_and_only_that(session, tmp_path):
    seen = Recorder(session)
    session.set_data({"val_fraction": 0.2})
    assert seen.take() == ["data_config_changed"]
    session.set_data({"val_fraction": 0.2})  # no change, no event
    session.set_train(dict(session.config.train.__dict__))
    session.set_model(session.config.model.plugin, session.config.model.params)
    session.set_tokenizer(session.config.tokenizer.plugin, session.config.tokenizer.params)
    assert seen.take() == []
    session.set_train({"max_steps": 7})
    session.set_model("gpt", {**session.config.model.params, "n_layer": 2})
    session.set_tokenizer("byte", {})
    assert seen.take() == ["train_config_changed", "model_config_changed", "tokenizer_changed"]
    session.build_tokenizer()
    assert seen.take() == ["tokenizer_changed"]
    session.tokenize()
    assert seen.take() == ["corpus_tokenized"]
    session.use_demo_corpus()
    assert seen.take() == ["corpus_changed", "tokenizer_changed"]
    session.set_prompt("the dog")
    session.set_prompt("the dog")
    assert seen.take() == ["prompt_changed"]
    with pytest.raises(ConfigError):  # a bad value changes nothing and says nothing
        session.set_tokenizer("no-such-plugin", {})
    assert seen.take() == []


def test_a_preset_announces_the_sections_it_changed(session, tmp_path):
    preset = tmp_path / "longer.toml"
    preset.write_text("[train]\nmax_steps = 99\n", encoding="utf-8")
    seen = Recorder(session)
    session.apply_preset(preset)
    assert seen.take() == ["train_config_changed"]


def test_listeners_may_call_back_into_the_session_from_another_thread(session):
    """Events come after the lock is released: a listener handing work to another thread that
    takes the lock (as the GUI's worker threads do) never deadlocks the emitting thread."""
    done: list[int] = []

    def listener() -> None:
        worker = threading.Thread(target=lambda: (session.set_train({"max_steps": 5}), done.append(1)))
        worker.start()
        worker.join(5)

    session.events.data_config_changed.connect(listener)
    session.set_data({"val_fraction": 0.3})
    assert done == [1] and session.config.train.max_steps == 5


def test_a_run_to_its_end_through_the_controller(session, tmp_path):
    seen = Recorder(session)
    steps: list[int] = []
    session.run.events.step.connect(lambda metrics: steps.append(metrics.step))
    session.start_training()
    wait_until(lambda: not session.run.state.active)
    assert session.run.state == RunState.FINISHED and session.run.stop_reason == "finished"
    events = seen.take()
    # preparing tokenizes (the session says so) and adopts the trainer, then the run trains to the end
    assert events[0] == "run.state_changed:preparing"
    assert events.index("corpus_tokenized") < events.index("model_changed") < events.index("run.state_changed:training")
    assert events[-3:] == ["run.finished", "run.state_changed:finished", "run.model_updated"]
    assert steps[-1] == session.config.train.max_steps == session.trainer.step


class StepByStep:
    """A fake trainer whose steps wait for the test, to pause, resume and stop it mid-run."""

    def __init__(self) -> None:
        self.control = TrainingControl()
        self.stop_reason: str | None = None
        self.run_dir = None
        self.step = 0

    def steps(self):
        while self.control.wait_while_paused():
            self.step += 1
            yield StepMetrics(step=self.step, max_steps=10_000, elapsed_s=0.0, train_loss=1.0, lr=1e-3,
                              tokens_per_s=1.0, tokens_seen=self.step)
            time.sleep(0.002)
        self.stop_reason = "stopped"


def test_pause_resume_and_stop_change_the_state_at_once():
    run = RunController()
    states: list[str] = []
    run.events.state_changed.connect(lambda state: states.append(state.value))
    trainer = StepByStep()
    run.start(lambda: trainer)  # type: ignore[arg-type, return-value]
    wait_until(lambda: trainer.step > 3)
    run.pause()
    assert run.state == RunState.PAUSED and trainer.control.paused
    paused_at = trainer.step
    time.sleep(0.05)
    assert trainer.step <= paused_at + 1  # at most the step that was running
    run.resume()
    wait_until(lambda: trainer.step > paused_at + 3)
    with pytest.raises(ConfigError, match="in progress"):
        run.start(lambda: StepByStep())  # type: ignore[arg-type, return-value] — one run at a time
    assert run.stop_and_wait(5)
    assert states == ["preparing", "training", "paused", "training", "stopping", "finished"]
    assert run.stop_reason == "stopped"


def test_a_failure_is_reported_and_the_next_run_may_start():
    run = RunController()
    failures: list[BaseException] = []
    run.events.failed.connect(lambda exc, details: failures.append(exc))

    def broken():
        raise TrainingError("the loss became nan at step 2")

    run.start(broken)
    wait_until(lambda: not run.state.active)
    assert run.state == RunState.FAILED and isinstance(failures[0], TrainingError)
    assert run.trainer is None  # it never trained

    def cancelled():
        raise Cancelled("the corpus changed while preparing the run; start again")

    run.start(cancelled)
    wait_until(lambda: not run.state.active and len(failures) == 2)
    assert run.state == RunState.IDLE  # a cancel is no failure


def test_stopping_while_preparing_abandons_the_run_without_waiting():
    run = RunController()
    release = threading.Event()
    trainer = StepByStep()

    def slow():
        release.wait(5)
        return trainer

    run.start(slow)  # type: ignore[arg-type]
    started = time.perf_counter()
    assert run.stop_and_wait(5) and time.perf_counter() - started < 1  # not held up by the preparation
    assert run.state == RunState.IDLE
    release.set()
    run.thread.join(5)
    assert run.state == RunState.IDLE and run.trainer is None and trainer.step == 0


def test_the_probe_never_waits_for_a_step_and_follows_the_weights(session, tmp_path):
    trainer = session.create_trainer(tmp_path / "run")
    first = session.predictor()
    assert first is not None and session.probe_step == 0
    with trainer.lock:  # as during a training step
        answered = []
        worker = threading.Thread(target=lambda: answered.append(session.predictor(fresh=False).next_token("the")))
        worker.start()
        worker.join(5)
        assert answered, "a keystroke's query waited for the training step"
    for _ in trainer.steps():
        pass
    before = first.next_token("the").probs
    session.run.events.model_updated.emit()  # what the controller says at an evaluation
    after = session.predictor().next_token("the").probs
    assert session.probe_step == trainer.step and not torch.allclose(torch.tensor(before), torch.tensor(after))
    assert after == pytest.approx(trainer.predictor().next_token("the").probs)


def test_opening_a_run_announces_its_settings_and_model(session, tmp_path):
    trainer = session.create_trainer(tmp_path / "run")
    for _ in trainer.steps():
        pass
    other = Session(session.registry)
    seen = Recorder(other)
    other.load_run(tmp_path / "run")
    events = seen.take()
    assert {"tokenizer_changed", "model_config_changed", "train_config_changed"} <= set(events)
    assert events[-2:] == ["model_changed", "run_loaded"]
    assert other.loaded_run == Path(tmp_path / "run") and other.has_model()


def test_probing_an_earlier_step_and_back_to_the_latest(session, tmp_path):
    trainer = session.create_trainer(tmp_path / "run")
    for _ in trainer.steps():
        pass
    assert {0, 10, 12} <= set(session.viewable_steps())  # snapshots at 0 and 10, checkpoints at 6 and 12
    seen: list[object] = []
    session.events.view_step_changed.connect(seen.append)
    live = session.predictor().next_token("the cat").probs
    session.set_view_step(0)
    early = session.predictor().next_token("the cat").probs
    session.set_view_step(None)
    assert seen == [0, None] and session.predictor().next_token("the cat").probs == pytest.approx(live)
    assert not torch.allclose(torch.tensor(early), torch.tensor(live))  # the untrained model
    with pytest.raises(ConfigError, match="no weights kept"):
        session.set_view_step(7)
    timeline = session.timeline()
    assert timeline is not None and [r["step"] for r in timeline.records] == [0, 6, 10, 12]
    session.set_view_step(10)
    session.create_trainer(tmp_path / "run2")  # another run: back to its own latest weights
    assert session.view_step is None


def test_the_truth_of_the_demo_corpus_in_the_sessions_tokens(registry):
    demo = Session(registry)  # the bundled demo corpus
    assert demo.truth() is None  # no tokenizer yet
    demo.build_tokenizer()
    truth = demo.truth()
    assert truth is not None and truth.spec.name == "demo"
    odds = truth.next_token("the cat sat on the")
    words = {demo.tokenizer.token_string(i).strip("·▁ Ġ"): p for i, p in odds.items()}
    assert words == pytest.approx({"mat": 0.6, "floor": 0.25, "couch": 0.15})


def test_what_followed_the_prompt_in_the_training_text(session):
    assert session.continuations("the cat") is None  # nothing tokenized yet
    corpus = session.tokenize()
    seen: list[str] = []
    session.events.continuations_ready.connect(lambda: seen.append("ready"))
    assert session.build_continuations() is session.build_continuations()  # built once
    assert seen == ["ready"]
    found = session.continuations("the cat sat on the ")
    ids = session.tokenizer.encode("the cat sat on the ")[-found.n:]
    train = corpus.train.tolist()
    brute: dict[int, int] = {}
    for i in range(len(train) - found.n):
        if train[i : i + found.n] == ids:
            brute[train[i + found.n]] = brute.get(train[i + found.n], 0) + 1
    assert found.n >= 1 and found.counts == brute and found.occurrences == sum(brute.values())
