"""The Qt-free Session behind the app window: data, tokenizer, preview, trainer, predictor."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from lmstudio_app.errors import Cancelled, ConfigError, DataError, ParamError
from lmstudio_app.params import build_params
from lmstudio_app.resources import demo_corpus_path
from lmstudio_app.session import Session, default_config

pytestmark = pytest.mark.usefixtures("home")  # settings and runs under tmp_path, never the real home


def test_new_session_starts_on_the_demo_corpus_with_a_bundled_preset(registry):
    s = Session(registry)
    assert s.using_demo
    assert s.text == demo_corpus_path().read_text(encoding="utf-8")
    assert [Path(i.path) for i in s.file_infos] == [demo_corpus_path()]
    assert s.config.to_dict() == default_config().to_dict()
    assert s.config.data.files == []
    assert s.tokenizer is None and s.corpus is None and s.trainer is None


def test_set_files_error_keeps_everything_as_it_was(session, text_file, tmp_path):
    session.build_tokenizer()
    before = (session.text, list(session.file_infos), session.tokenizer, list(session.config.data.files))
    with pytest.raises(DataError, match="missing.txt"):
        session.set_files([tmp_path / "missing.txt"])
    binary = tmp_path / "latin.txt"
    binary.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    with pytest.raises(DataError, match="latin.txt"):
        session.set_files([binary])
    after = (session.text, list(session.file_infos), session.tokenizer, list(session.config.data.files))
    assert after == before
    assert not session.using_demo


def test_other_encoding_and_adding_and_removing_files(session, text_file, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    session.add_files([latin], encoding="latin-1")
    assert [Path(i.path).name for i in session.file_infos] == ["small.txt", "latin.txt"]
    assert "café crème" in session.text and session.encoding == "latin-1"
    session.remove_file(text_file)
    assert [Path(i.path).name for i in session.file_infos] == ["latin.txt"]
    with pytest.raises(ConfigError, match="not one of the corpus files"):
        session.remove_file(text_file)
    session.remove_file(latin)  # the last one: back to the demo
    assert session.using_demo and session.config.data.files == []


def test_tokenize_builds_the_tokenizer_and_splits(session):
    corpus = session.tokenize()
    assert session.tokenizer is not None and session.corpus is corpus
    assert corpus.vocab_size == session.tokenizer.vocab_size
    assert corpus.n_tokens == len(session.text)  # one token per character
    assert len(corpus.val) == pytest.approx(0.1 * len(session.text), abs=2)
    session.set_data({"val_fraction": 0.25})
    assert session.corpus is None and session.tokenizer is not None  # the split alone changed
    assert len(session.tokenize().val) == pytest.approx(0.25 * len(session.text), abs=2)


def test_settings_are_validated_and_bad_ones_change_nothing(session):
    session.build_tokenizer()
    with pytest.raises(ParamError, match="min_frequency"):
        session.set_tokenizer("char", {"min_frequency": 0})
    with pytest.raises(ConfigError, match="nope"):
        session.set_tokenizer("nope", {})
    assert session.tokenizer is not None and session.config.tokenizer.plugin == "char"
    with pytest.raises(ParamError, match="n_layer"):
        session.set_model("gpt", {"n_layer": 0})
    with pytest.raises(ParamError, match="train.batch_size"):
        session.set_train({"batch_size": 0})
    session.set_train({"max_steps": 7})
    assert session.config.train.max_steps == 7 and session.config.train.batch_size == 4
    session.set_tokenizer("byte", {})
    assert session.tokenizer is None and session.config.tokenizer.plugin == "byte"


def test_changing_the_text_while_building_discards_the_stale_tokenizer(session):
    def change_text_midway(done: int, total: int) -> None:
        if session.using_demo is False:
            session.use_demo_corpus()

    with pytest.raises(Cancelled, match="changed"):
        session.build_tokenizer(progress=change_text_midway)
    assert session.tokenizer is None


def test_concurrent_callers_share_one_tokenizer_build(session):
    built = []
    original = session._build_tokenizer

    def counting(progress, cancel):
        built.append(True)
        return original(progress, cancel)

    session._build_tokenizer = counting
    with ThreadPoolExecutor(max_workers=4) as pool:
        tokenizers = list(pool.map(lambda _: session.ensure_tokenizer(), range(4)))
    assert len(built) == 1 and all(t is tokenizers[0] for t in tokenizers)
    corpus = session.tokenize()
    assert session.ensure_tokenizer() is tokenizers[0] and session.corpus is corpus


def test_model_preview_matches_the_real_model(session, registry):
    preview = session.model_preview()
    _, model_params = __import__("lmstudio_app.config", fromlist=["x"]).validate_plugins(session.config, registry)
    model = registry.model("gpt").build(model_params, session.tokenizer.vocab_size)
    assert preview.parameters == model.num_parameters()
    assert preview.non_embedding_parameters == model.num_parameters(non_embedding=True)
    assert preview.flops_per_token == pytest.approx(model.flops_per_token())
    assert preview.context_length == 16
    # weights + grads + two AdamW moments, plus a positive activation estimate
    assert preview.memory_bytes > 16 * preview.parameters
    assert preview.seconds_per_step is not None and preview.seconds_per_step > 0
    assert preview.device.startswith("CPU")
    bigger = Session(session.registry, session.config)
    bigger.set_model("gpt", {**session.config.model.params, "n_layer": 2})
    assert bigger.model_preview(measure_speed=False).parameters > preview.parameters


def test_activation_estimate_grows_with_the_batch(session):
    small = session.model_preview(measure_speed=False).memory_bytes
    session.set_train({"batch_size": 16})
    large = session.model_preview(measure_speed=False).memory_bytes
    assert large > small


def test_create_trainer_reuses_the_tokenizer_and_corpus_and_exposes_a_predictor(session, tmp_path):
    corpus = session.tokenize()
    tokenizer = session.tokenizer
    trainer = session.create_trainer(tmp_path / "run")
    assert trainer.tokenizer is tokenizer and trainer.corpus is corpus
    last = None
    for last in trainer.steps():
        pass
    assert last is not None and last.step == 12
    predictor = session.predictor()
    # Probing runs on a copy of the live weights (never waiting for a step), equal to them.
    assert predictor is not None and predictor.model is not trainer.model and predictor.lock is not trainer.lock
    live = dict(trainer.model.state_dict())
    assert all(torch.equal(value, live[name]) for name, value in predictor.model.state_dict().items())
    assert session.predictor() is predictor and session.probe_step == 12  # cached per trainer
    prediction = predictor.next_token("the cat")
    assert prediction.probs == pytest.approx(trainer.predictor().next_token("the cat").probs)
    assert prediction.probs.sum() == pytest.approx(1.0)
    assert prediction.candidates[0].prob == pytest.approx(prediction.probs.max())
    # the trainer works on a copy: later edits in the session do not reach it
    session.set_train({"max_steps": 99})
    assert trainer.config.train.max_steps == 12


def test_load_run_and_resume(session, registry, tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    trainer = session.create_trainer(run_dir)
    for _ in trainer.steps():
        pass
    other = Session(registry, tiny_config)
    other.load_run(run_dir)
    assert other.loaded_run == run_dir and other.trainer is None
    assert other.tokenizer is not None and other.tokenizer.vocab_size == trainer.tokenizer.vocab_size
    live = trainer.model.state_dict()
    loaded = other.predictor().model.state_dict()
    assert all(torch.equal(live[k].cpu(), loaded[k].cpu()) for k in live)
    other.use_demo_corpus()
    resumed = other.resume_trainer(run_dir, {"max_steps": 16})
    assert resumed.step == 12
    # the session follows the resumed run: its files, tokenizer and token arrays
    assert not other.using_demo and other.text == session.text
    assert other.tokenizer is resumed.tokenizer and other.corpus is resumed.corpus
    steps = [m.step for m in resumed.steps()]
    assert steps[-1] == 16 and other.config.train.max_steps == 16
    with pytest.raises(ConfigError, match="max_steps"):
        other.resume_trainer(run_dir, {"max_steps": 0})


def test_apply_preset_keeps_the_data(session, tmp_path):
    files = list(session.config.data.files)
    session.apply_preset("default")
    assert session.config.data.files == files
    assert session.config.tokenizer.plugin == "word" and session.tokenizer is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nplugin = "nonexistent"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="nonexistent"):
        session.apply_preset(bad)
    assert session.config.model.plugin == "gpt"
    assert build_params(type(session.config.train), {}).max_steps == 2000  # the dataclass default is untouched


def test_session_module_never_imports_qt():
    code = ("import sys, lmstudio_app.session; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'lmstudio_builtins')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_small_model_has_its_step_timed_a_large_one_estimated(session, monkeypatch):
    from lmstudio_app.training import model_preview

    timed = session.model_preview()
    assert timed.step_time_measured and timed.seconds_per_step > 0
    monkeypatch.setattr(model_preview, "TIMED_STEP_MAX_FLOPS", 0.0)  # as if the model were huge
    estimated = session.model_preview()
    assert not estimated.step_time_measured and estimated.seconds_per_step > 0


def test_activations_are_those_of_one_micro_batch(session):
    session.set_train({"batch_size": 16, "grad_accum": 1})
    whole = session.model_preview(measure_speed=False).memory_bytes
    session.set_train({"batch_size": 16, "grad_accum": 4})
    quarter = session.model_preview(measure_speed=False).memory_bytes
    assert quarter < whole


def test_timing_a_step_trains_a_throwaway_copy_in_the_training_precision(session, registry):
    from lmstudio_app.config import validate_plugins
    from lmstudio_app.training.model_preview import time_training_step

    vocab_size = session.ensure_tokenizer().vocab_size
    _, params = validate_plugins(session.config, registry)
    seconds = time_training_step(registry.model("gpt"), params, vocab_size, session.config.train, "builtin",
                                 seconds=0.01)
    assert 0 < seconds < 5
    session.set_train({"batch_size": 6, "grad_accum": 4})  # accepted here; a step cannot split it
    with pytest.raises(ConfigError, match="grad_accum"):
        time_training_step(registry.model("gpt"), params, vocab_size, session.config.train, "builtin")
