"""The Qt-free state behind one app window: the corpus, the tokenizer, the config, the run.

The GUI is a thin view over a :class:`Session`: panels read its attributes and call its
methods (from worker threads for the slow ones: building the tokenizer, tokenizing, creating a
trainer), and the session announces every change of its own state on :attr:`Session.events`
(and the run's on ``session.run.events``): psygnal signals, emitted on the thread that made the
change; the GUI re-delivers them on its own thread (``gui/events.py``). A panel therefore never
tells the other panels what it changed: the session does. Everything here is testable without a
display, and nothing here computes what the CLI would also need: the work is done by the core
packages (data, training, inference).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from .config import RunConfig, copy_config, load_config, load_preset, merge_config, validate_plugins
from .data.continuations import ContinuationIndex, Continuations
from .data.corpus import TokenizedCorpus, iter_text_chunks, tokenize_corpus
from .data.files import FileInfo, load_corpus_text
from .devices import resolve_device
from .errors import Cancelled, ConfigError, LMStudioError, ParamError
from .inference.predictor import Predictor, load_predictor
from .inference.truth import TokenTruth, token_truth
from .params import build_params, params_to_dict
from .registry import PluginRegistry
from .resources import demo_corpus_path, list_presets, preset_path
from .runs.folder import RunDir
from .runs.snapshots import available_steps
from .runs.timeline import Timeline, load_timeline
from .settings import disabled_plugins
from .tokenizer import Tokenizer
from .training.controller import RunController
from .training.model_preview import ModelPreview, preview_model
from .training.probe import LiveProbe
from .training.trainer import Trainer

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

CONTINUATION_CONTEXT = 8  # tokens of the prompt's end looked up in the training text, at the most
STEP_PREDICTORS_KEPT = 4  # models of earlier steps kept loaded (scrubbing back and forth)
TRUTH_SAMPLE_CHARS = 1 << 16  # of the corpus text, for the truth plugins to recognise it
DEFAULT_PROMPT = "the cat sat on the"  # the demo grammar's best-known sentence start
DEFAULT_PRESET = "default"  # learns the demo corpus in about a minute on a laptop CPU
FAST_CPU_PRESET = "fast-cpu"  # the fastest measured CPU recipe (bench/NOTES.md): the default on a CPU


def default_config() -> RunConfig:
    """The bundled default preset; on a CPU, with the fast CPU recipe's [model] and [train].

    The demo keeps the default preset's word tokenizer (whole next words to compare with the
    grammar's known odds) and its samples at each evaluation; the network and the optimiser
    are the fastest measured CPU recipe (bench/NOTES.md).
    """
    presets = list_presets()
    config = load_preset(preset_path(DEFAULT_PRESET), RunConfig()) if DEFAULT_PRESET in presets else RunConfig()
    if FAST_CPU_PRESET in presets and resolve_device("auto").type == "cpu":
        sample_tokens = config.train.sample_tokens
        fast = load_preset(preset_path(FAST_CPU_PRESET), config)
        config = merge_config(fast, {"tokenizer": config.to_dict()["tokenizer"],
                                     "train": {"sample_tokens": sample_tokens}}, "default")
    return config


class SessionEvents(SignalGroup):
    """What changed in a :class:`Session` (see the module docstring); none carries a payload
    that is not also an attribute of the session, so a late listener can always catch up."""

    corpus_changed = Signal()  # text, file_infos, using_demo, encoding
    tokenizer_changed = Signal()  # config.tokenizer, or the tokenizer itself (built, cleared, a run's)
    corpus_tokenized = Signal()  # session.corpus holds token arrays for the current tokenizer
    data_config_changed = Signal()  # config.data's split settings
    model_config_changed = Signal()  # config.model (plugin or params)
    train_config_changed = Signal()  # config.train
    watch_config_changed = Signal()  # config.watch: the prompts the next run records
    model_changed = Signal()  # the model to probe is another one (a new run, a loaded run)
    run_loaded = Signal(object)  # the Path of a run opened for probing (session.loaded_run)
    prompt_changed = Signal(str)  # the prompt the probing panels show
    view_step_changed = Signal(object)  # session.view_step: the step whose weights are probed (None: live)
    continuations_ready = Signal()  # the index of what follows what in the training text is built


class Session:
    """One window's worth of state.

    The GUI thread reads the attributes; the slow methods may run on worker threads. State
    changes happen under a lock, and a result computed from inputs that changed meanwhile is
    discarded with :class:`Cancelled` rather than stored. Events are emitted after the lock is
    released, so a listener may call back into the session.
    """

    def __init__(self, registry: PluginRegistry | None = None, config: RunConfig | None = None) -> None:
        self.registry = registry if registry is not None else PluginRegistry.discover(disabled=disabled_plugins())
        self.events = SessionEvents()
        self.run = RunController()  # the training run: its state and events (run.events)
        self.config: RunConfig = copy_config(config) if config is not None else default_config()
        self.prompt = DEFAULT_PROMPT
        self.view_step: int | None = None  # probe the weights kept at this step instead of the latest
        self._step_predictors: dict[tuple[Path, int], Predictor] = {}  # a few, most recent last
        self._truths: dict[int, TokenTruth | None] = {}  # per tokenizer (its id()), for idle sessions
        self._continuations: tuple[int, ContinuationIndex] | None = None  # (id() of its token array, index)
        self.file_infos: list[FileInfo] = []
        self.text = ""
        self.using_demo = True
        self.encoding = "utf-8"
        self.tokenizer: Tokenizer | None = None
        self.corpus: TokenizedCorpus | None = None
        self.trainer: Trainer | None = None
        self.loaded_run: Path | None = None
        self._loaded_predictor: Predictor | None = None
        self._probe: LiveProbe | None = None  # the live trainer's weights, copied to probe them
        self.run.events.model_updated.connect(self._on_weights_moved)
        # Bumped whenever the text or the tokenizer settings change, so a tokenizer or corpus
        # computed in a worker thread from stale inputs is thrown away instead of stored.
        self._generation = 0
        self._lock = threading.RLock()  # held briefly, around reads and writes of the state
        self._build_lock = threading.Lock()  # held while a tokenizer trains: one build at a time
        if self.config.data.files:
            self.set_files(self.config.data.files)
        else:
            self.use_demo_corpus()

    # ---- data -----------------------------------------------------------------------------

    def use_demo_corpus(self) -> None:
        text, infos = load_corpus_text([demo_corpus_path()])
        with self._lock:
            self.text, self.file_infos, self.using_demo, self.encoding = text, infos, True, "utf-8"
            self.config.data.files = []
            self._invalidate(tokenizer=True)
        self._emit(self.events.corpus_changed, self.events.tokenizer_changed)

    def set_files(self, paths: Sequence[str | Path], encoding: str = "utf-8",
                  progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> None:
        """Read ``paths`` (files or folders); on a DataError or a cancel the corpus stays as it was.

        ``progress(bytes_done, bytes_total)`` follows the files; ``cancel()`` is checked between them.
        """
        if not paths:
            raise ConfigError("data.files: choose at least one file or folder (or use the demo corpus)")
        text, infos = load_corpus_text(list(paths), readers=self.registry.readers_by_extension(), encoding=encoding,
                                       progress=progress, cancel=cancel)
        with self._lock:
            self.text, self.file_infos, self.using_demo, self.encoding = text, infos, False, encoding
            self.config.data.files = [str(Path(p)) for p in paths]
            self._invalidate(tokenizer=True)
        self._emit(self.events.corpus_changed, self.events.tokenizer_changed)  # a new text, a new tokenizer

    def add_files(self, paths: Sequence[str | Path], encoding: str | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> None:
        """Add files or folders to the current ones (replacing the demo corpus)."""
        current = [] if self.using_demo else [Path(p) for p in self.config.data.files]
        known = {p.resolve() for p in current}
        merged = current + [Path(p) for p in paths if Path(p).resolve() not in known]
        self.set_files(merged, encoding or self.encoding, progress, cancel)

    def remove_file(self, path: str | Path) -> None:
        """Drop one file; removing the last one goes back to the demo corpus."""
        self.remove_files([path])

    def remove_files(self, paths: Sequence[str | Path]) -> None:
        """Drop files (reading the rest once); removing them all goes back to the demo corpus."""
        current = {Path(info.path).resolve() for info in self.file_infos}
        targets = {Path(p).resolve() for p in paths}
        for path in paths:
            if Path(path).resolve() not in current:
                raise ConfigError(f"{path}: not one of the corpus files")
        remaining = [Path(info.path) for info in self.file_infos if Path(info.path).resolve() not in targets]
        if self.using_demo or not remaining:
            self.use_demo_corpus()
        else:
            self.set_files(remaining, self.encoding)

    def set_data(self, values: Mapping[str, Any]) -> None:
        """Change the validation split (``val_fraction``, ``val_split``); the files stay."""
        merged = {**params_to_dict(self.config.data), **dict(values)}
        new_data = build_params(type(self.config.data), merged, "data")
        with self._lock:
            if new_data == self.config.data:
                return
            self.config.data = new_data
            self._invalidate(tokenizer=False)
        self._emit(self.events.data_config_changed)

    # ---- settings -------------------------------------------------------------------------

    def set_tokenizer(self, plugin: str, params: Mapping[str, Any]) -> None:
        spec = self.registry.tokenizer(plugin)  # ConfigError naming the available ones
        checked = params_to_dict(build_params(spec.params, dict(params), "tokenizer"))
        with self._lock:
            if self._same_choice(self.config.tokenizer, plugin, checked, spec.params):
                return
            self.config.tokenizer.plugin = plugin
            self.config.tokenizer.params = checked
            self._invalidate(tokenizer=True)
        self._emit(self.events.tokenizer_changed)

    def set_model(self, plugin: str, params: Mapping[str, Any]) -> None:
        spec = self.registry.model(plugin)
        checked = params_to_dict(build_params(spec.params, dict(params), "model"))
        with self._lock:
            if self._same_choice(self.config.model, plugin, checked, spec.params):
                return
            self.config.model.plugin = plugin
            self.config.model.params = checked
        self._emit(self.events.model_config_changed)

    @staticmethod
    def _same_choice(choice: Any, plugin: str, checked: dict[str, Any], params_cls: type) -> bool:
        """Whether ``plugin`` with ``checked`` params is what ``choice`` already says (its params
        may leave defaults out: a preset names only what it changes)."""
        if choice.plugin != plugin:
            return False
        try:
            return params_to_dict(build_params(params_cls, dict(choice.params), "current")) == checked
        except ParamError:
            return False

    def set_train(self, values: Mapping[str, Any]) -> None:
        merged = {**params_to_dict(self.config.train), **dict(values)}
        new_train = build_params(type(self.config.train), merged, "train")
        with self._lock:
            if new_train == self.config.train:
                return
            self.config.train = new_train
        self._emit(self.events.train_config_changed)

    def set_watch(self, values: Mapping[str, Any]) -> None:
        """The prompts the next run watches (``prompts``, ``targets``, ``top_k``); no prompts: the
        run chooses them (a synthetic corpus's own, else a few from the validation text)."""
        merged = {**params_to_dict(self.config.watch), **dict(values)}
        if "prompts" in values and "targets" not in values:
            merged["targets"] = []  # new prompts: what follows the old ones no longer applies
        new_watch = build_params(type(self.config.watch), merged, "watch")
        with self._lock:
            if new_watch == self.config.watch:
                return
            self.config.watch = new_watch
        self._emit(self.events.watch_config_changed)

    def apply_preset(self, name_or_path: str | Path) -> None:
        """Overlay a preset (a bundled name like ``fast-cpu`` or a TOML path); the data stays."""
        if self.run.state.active:
            raise ConfigError(f"{name_or_path}: stop the training before changing the settings")
        name = str(name_or_path)
        path = preset_path(name) if name in list_presets() else Path(name_or_path)
        new_config = load_preset(path, self.config)
        validate_plugins(new_config, self.registry)  # reject a preset naming a missing plugin
        with self._lock:
            old = self.config
            new_config.data = old.data
            self.config = new_config
            if new_config.tokenizer != old.tokenizer:
                self._invalidate(tokenizer=True)
        self._emit(*self._config_events(old, new_config))

    def _config_events(self, old: RunConfig, new: RunConfig) -> list[Any]:
        """The events for the config sections that differ between ``old`` and ``new``."""
        pairs = ((old.data, new.data, self.events.data_config_changed),
                 (old.tokenizer, new.tokenizer, self.events.tokenizer_changed),
                 (old.model, new.model, self.events.model_config_changed),
                 (old.train, new.train, self.events.train_config_changed),
                 (old.watch, new.watch, self.events.watch_config_changed))
        return [event for before, after, event in pairs if before != after]

    def set_prompt(self, text: str) -> None:
        """The prompt the probing panels show (the predictions panel edits it)."""
        with self._lock:
            if text == self.prompt:
                return
            self.prompt = text
        self.events.prompt_changed.emit(text)

    def _invalidate(self, *, tokenizer: bool) -> None:
        self._generation += 1
        self.corpus = None
        if tokenizer:
            self.tokenizer = None

    @staticmethod
    def _emit(*events: Any) -> None:
        """Emit after the state change is complete and the lock released (listeners may call back)."""
        for event in events:
            event.emit()

    # ---- tokenizer and corpus -------------------------------------------------------------

    def build_tokenizer(
        self, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None
    ) -> Tokenizer:
        """Build (train, for BPE-like tokenizers) the configured tokenizer on the current text."""
        with self._build_lock:
            return self._build_tokenizer(progress, cancel)

    def ensure_tokenizer(
        self, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None
    ) -> Tokenizer:
        """The current tokenizer, built first if there is none (once, however many threads ask)."""
        with self._build_lock:
            return self.tokenizer or self._build_tokenizer(progress, cancel)

    def _build_tokenizer(self, progress: ProgressCallback | None, cancel: CancelCheck | None) -> Tokenizer:
        with self._lock:
            generation, text = self._generation, self.text
            tok_params, _ = validate_plugins(self.config, self.registry)
            plugin = self.config.tokenizer.plugin

        def report(done: int, total: int) -> None:
            if cancel is not None and cancel():
                raise Cancelled("building the tokenizer was cancelled")
            if progress is not None:
                progress(done, total)

        report(0, 1)
        tokenizer = self.registry.build_tokenizer(plugin, tok_params, lambda: iter_text_chunks(text), report)
        with self._lock:
            self._check_current(generation)
            self.tokenizer = tokenizer
            self.corpus = None  # token arrays always belong to the current tokenizer
        self._emit(self.events.tokenizer_changed)
        return tokenizer

    def tokenize(self, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> TokenizedCorpus:
        """Split the text into train/val token arrays, building the tokenizer first if needed."""
        tokenizer = self.ensure_tokenizer(progress, cancel)
        with self._lock:
            generation, text, data = self._generation, self.text, self.config.data
        corpus = tokenize_corpus(tokenizer, text, data.val_fraction, data.val_split, progress=progress, cancel=cancel)
        with self._lock:
            self._check_current(generation)
            if self.tokenizer is not tokenizer:  # rebuilt meanwhile: these IDs would not match it
                raise Cancelled("the tokenizer was rebuilt meanwhile; tokenize again")
            self.corpus = corpus
        self._emit(self.events.corpus_tokenized)
        return corpus

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise Cancelled("the corpus or tokenizer settings changed meanwhile; run it again")

    # ---- model preview --------------------------------------------------------------------

    def model_preview(self, measure_speed: bool = True) -> ModelPreview:
        """Size, memory and time per step of the configured model (builds the tokenizer if needed)."""
        vocab_size = self.ensure_tokenizer().vocab_size
        _, model_params = validate_plugins(self.config, self.registry)
        spec = self.registry.model(self.config.model.plugin)
        owner = self.registry.owner("models", spec.name)
        return preview_model(spec, model_params, vocab_size, self.config.train, owner, measure_speed)

    # ---- training and probing -------------------------------------------------------------

    def start_training(self) -> None:
        """Prepare a new run on the session's corpus (in a new run folder) and train it on the
        run's thread (:attr:`run`); its progress comes as ``run.events``."""
        self.run.start(self.create_trainer)

    def resume_training(self, run_dir: str | Path, train: Mapping[str, Any] | None = None) -> None:
        """Continue a saved run on the run's thread (see :meth:`resume_trainer`)."""
        self.run.start(lambda: self.resume_trainer(run_dir, train))

    def create_trainer(self, run_dir: str | Path | None = None) -> Trainer:
        """A new run on the session's corpus; the tokenizer and token arrays are reused."""
        with self._lock:
            tokenizer, corpus = self.tokenizer, self.corpus
        if corpus is None:
            corpus = self.tokenize()
            with self._lock:
                tokenizer = self.tokenizer
                if self.corpus is not corpus:  # the data changed while tokenizing
                    raise Cancelled("the corpus changed while preparing the run; start again")
        trainer = Trainer(copy_config(self.config), self.registry, run_dir, tokenizer=tokenizer, corpus=corpus)
        with self._lock:
            self._adopt_trainer(trainer)
        self._emit(self.events.model_changed)
        return trainer

    def resume_trainer(self, run_dir: str | Path, train: Mapping[str, Any] | None = None) -> Trainer:
        """Continue a saved run; ``train`` overrides its [train] values (e.g. a higher max_steps).

        The session switches to the run's data, tokenizer and config, so every panel shows
        what is being trained; the text is read and tokenized once, here, for both.
        """
        run = RunDir.open(run_dir)
        config = run.load_config()
        if train:
            merged = {**params_to_dict(config.train), **dict(train)}
            try:
                config.train = build_params(type(config.train), merged, "train")
            except ParamError as exc:
                raise ConfigError(f"{run_dir}: {exc}") from None
        tokenizer = run.load_tokenizer()  # the run's own: its IDs match the checkpoint
        using_demo = not config.data.files
        files = config.data.files or [demo_corpus_path()]
        text, infos = load_corpus_text(files, readers=self.registry.readers_by_extension())
        data = config.data
        corpus = tokenize_corpus(tokenizer, text, data.val_fraction, data.val_split)
        trainer = Trainer(config, self.registry, run_dir, resume=True, tokenizer=tokenizer, corpus=corpus)
        with self._lock:
            old = self.config
            self._adopt_trainer(trainer)
            self.text, self.file_infos, self.using_demo, self.encoding = text, infos, using_demo, "utf-8"
            self._invalidate(tokenizer=True)
            self.tokenizer, self.corpus = tokenizer, corpus
            self.config = copy_config(trainer.config)
        events = self.events
        self._emit(events.corpus_changed, *self._config_events(old, self.config), events.tokenizer_changed,
                   events.corpus_tokenized, events.model_changed)
        return trainer

    def _adopt_trainer(self, trainer: Trainer) -> None:
        self.view_step = None  # another model: back to its live weights
        self.trainer = trainer
        self._probe = LiveProbe(trainer)
        self._loaded_predictor = None
        self.loaded_run = None

    def load_run(self, run_dir: str | Path) -> None:
        """Open a finished (or paused elsewhere) run for probing: its model, tokenizer and config."""
        if self.run.state.active:
            raise ConfigError(f"{run_dir}: stop the training before opening another run")
        path = Path(run_dir)
        predictor = load_predictor(path, self.registry, self.config.train.device)
        config = load_config(path / "config.toml")
        with self._lock:
            old = self.config
            self.trainer = None
            self._probe = None
            self._loaded_predictor = predictor
            self.loaded_run = path
            self.view_step = None
            self.config = config
            self._invalidate(tokenizer=True)
            self.tokenizer = predictor.tokenizer  # the run's own tokenizer, matching its model
        events = self.events
        self._emit(*self._config_events(old, config), events.tokenizer_changed, events.model_changed)
        events.run_loaded.emit(path)

    def predictor(self, fresh: bool = True) -> Predictor | None:
        """What to probe: the live trainer's model, else a loaded run's; None before either.

        The live model is probed through a copy of its weights (:class:`LiveProbe`): queries never
        wait for a training step. With ``fresh``, a copy older than the latest evaluation, pause
        or end of the run is first brought up to date (waiting for the current step, if any);
        without, the copy is used as it is (what a keystroke in the prompt wants).
        """
        return self.predictor_at(self.view_step, fresh)

    def predictor_at(self, step: int | None, fresh: bool = True) -> Predictor | None:
        """The model as it was at ``step`` (weights the run kept; loaded once, a few kept loaded),
        or with None the latest, whatever step the app is viewing (see :meth:`predictor`)."""
        folder = self.run_folder()
        if step is not None and folder is not None:
            return self._predictor_at(folder.path, step)
        probe = self._probe
        if probe is not None:
            return probe.predictor(refresh=fresh)
        return self._loaded_predictor

    # ---- the run's history: its kept weights, its timeline, the corpus's truth ---------------

    def run_folder(self) -> RunDir | None:
        """The folder of the run being probed: the live trainer's, else the loaded run's."""
        if self.trainer is not None:
            return self.trainer.run_dir
        return RunDir(self.loaded_run) if self.loaded_run is not None else None

    def viewable_steps(self) -> list[int]:
        """The steps whose weights the run kept (snapshots and checkpoints): :meth:`set_view_step`'s choices."""
        folder = self.run_folder()
        return list(available_steps(folder)) if folder is not None and folder.path.is_dir() else []

    def set_view_step(self, step: int | None) -> None:
        """Probe the model as it was at ``step`` (one of :meth:`viewable_steps`); None: the latest."""
        if step is not None and step not in self.viewable_steps():
            shown = ", ".join(str(s) for s in self.viewable_steps()) or "none"
            raise ConfigError(f"step {step}: no weights kept for it (kept: {shown})")
        with self._lock:
            if step == self.view_step:
                return
            self.view_step = step
        self.events.view_step_changed.emit(step)

    def _predictor_at(self, folder: Path, step: int) -> Predictor:
        key = (folder, step)
        predictor = self._step_predictors.pop(key, None)
        if predictor is None:
            predictor = load_predictor(folder, self.registry, "cpu", step=step)
        self._step_predictors[key] = predictor  # most recent last
        while len(self._step_predictors) > STEP_PREDICTORS_KEPT:
            self._step_predictors.pop(next(iter(self._step_predictors)))
        return predictor

    def timeline(self) -> Timeline | None:
        """What the run recorded of its watched prompts; None before any (or for an older run)."""
        folder = self.run_folder()
        if folder is None or not folder.path.is_dir():
            return None
        try:
            return load_timeline(folder)
        except LMStudioError:
            return None

    def _training_tokens(self) -> np.ndarray | None:
        """The training token array the model learns from: the live run's, else the session's corpus."""
        corpus = self.trainer.corpus if self.trainer is not None else self.corpus
        return corpus.train if corpus is not None else None

    def build_continuations(self, progress: ProgressCallback | None = None,
                            cancel: CancelCheck | None = None) -> ContinuationIndex | None:
        """Index what follows what in the training text (seconds for a large corpus: call it from a
        worker thread); None when there is no tokenized corpus yet. Built once per token array."""
        tokens = self._training_tokens()
        if tokens is None:
            return None
        built = self._continuations
        if built is not None and built[0] == id(tokens):
            return built[1]
        index = ContinuationIndex.build(tokens, progress=progress, cancel=cancel)
        with self._lock:
            self._continuations = (id(tokens), index)
        self.events.continuations_ready.emit()
        return index

    def continuations(self, text: str, max_n: int = CONTINUATION_CONTEXT, top: int | None = None) -> Continuations | None:
        """What followed the end of ``text`` in the training text (counts, not truth), by the
        tokenizer of the model being probed; None until :meth:`build_continuations` has run."""
        tokens, built = self._training_tokens(), self._continuations
        tokenizer = self.trainer.tokenizer if self.trainer is not None else self.tokenizer
        if tokens is None or built is None or built[0] != id(tokens) or tokenizer is None:
            return None
        return built[1].continuations(tokenizer.encode(text), max_n=max_n, top=top)

    def truth(self) -> TokenTruth | None:
        """The corpus's exact next-token odds in the current tokenizer's tokens (the demo grammar's),
        if a plugin knows them: the live run's, else worked out from the text and the tokenizer."""
        if self.trainer is not None:
            return self.trainer.truth
        tokenizer = self.tokenizer
        if tokenizer is None:
            return None
        key = id(tokenizer)
        if key not in self._truths:
            spec = self.registry.truth_for(self.text[:TRUTH_SAMPLE_CHARS])
            try:
                self._truths = {key: token_truth(spec, tokenizer) if spec is not None else None}
            except LMStudioError:  # e.g. a tokenizer that merges tokens across documents
                self._truths = {key: None}
        return self._truths[key]

    def has_model(self) -> bool:
        """Whether there is a model to probe (a live or loaded run), without touching it."""
        return self._probe is not None or self._loaded_predictor is not None

    @property
    def probe_step(self) -> int | None:
        """The training step whose weights the live probe holds (None without a live trainer)."""
        return self._probe.step if self._probe is not None else None

    def _on_weights_moved(self) -> None:
        probe = self._probe
        if probe is not None:
            probe.mark_stale()
