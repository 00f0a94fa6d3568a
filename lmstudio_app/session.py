"""The Qt-free state behind one app window: the corpus, the tokenizer, the config, the trainer.

The GUI is a thin view over a :class:`Session`: panels read its attributes and call its
methods (from worker threads for the slow ones: building the tokenizer, tokenizing, creating a
trainer). Everything here is testable without a display, and nothing here computes what the CLI
would also need: the work is done by the core modules (data, training, inference).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import RunConfig, copy_config, load_config, load_preset, merge_config, validate_plugins
from .data.corpus import TokenizedCorpus, iter_text_chunks, tokenize_corpus
from .data.files import FileInfo, load_corpus_text
from .devices import resolve_device
from .errors import Cancelled, ConfigError, LMStudioError, ParamError, PluginCallError
from .inference.predictor import Predictor, load_predictor
from .params import build_params, params_to_dict
from .registry import PluginRegistry
from .resources import demo_corpus_path, list_presets, preset_path
from .runs.folder import RunDir
from .settings import disabled_plugins
from .tokenizer import Tokenizer
from .training.model_preview import ModelPreview, preview_model
from .training.trainer import Trainer

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

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


class Session:
    """One window's worth of state.

    The GUI thread reads the attributes; the slow methods may run on worker threads. State
    changes happen under a lock, and a result computed from inputs that changed meanwhile is
    discarded with :class:`Cancelled` rather than stored.
    """

    def __init__(self, registry: PluginRegistry | None = None, config: RunConfig | None = None) -> None:
        self.registry = registry if registry is not None else PluginRegistry.discover(disabled=disabled_plugins())
        self.config: RunConfig = copy_config(config) if config is not None else default_config()
        self.file_infos: list[FileInfo] = []
        self.text = ""
        self.using_demo = True
        self.encoding = "utf-8"
        self.tokenizer: Tokenizer | None = None
        self.corpus: TokenizedCorpus | None = None
        self.trainer: Trainer | None = None
        self.loaded_run: Path | None = None
        self._loaded_predictor: Predictor | None = None
        self._trainer_predictor: Predictor | None = None
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
            self.config.data = new_data
            self._invalidate(tokenizer=False)

    # ---- settings -------------------------------------------------------------------------

    def set_tokenizer(self, plugin: str, params: Mapping[str, Any]) -> None:
        spec = self.registry.tokenizer(plugin)  # ConfigError naming the available ones
        checked = build_params(spec.params, dict(params), "tokenizer")
        with self._lock:
            self.config.tokenizer.plugin = plugin
            self.config.tokenizer.params = params_to_dict(checked)
            self._invalidate(tokenizer=True)

    def set_model(self, plugin: str, params: Mapping[str, Any]) -> None:
        spec = self.registry.model(plugin)
        checked = build_params(spec.params, dict(params), "model")
        self.config.model.plugin = plugin
        self.config.model.params = params_to_dict(checked)

    def set_train(self, values: Mapping[str, Any]) -> None:
        merged = {**params_to_dict(self.config.train), **dict(values)}
        self.config.train = build_params(type(self.config.train), merged, "train")

    def apply_preset(self, name_or_path: str | Path) -> None:
        """Overlay a preset (a bundled name like ``fast-cpu`` or a TOML path); the data stays."""
        name = str(name_or_path)
        path = preset_path(name) if name in list_presets() else Path(name_or_path)
        new_config = load_preset(path, self.config)
        validate_plugins(new_config, self.registry)  # reject a preset naming a missing plugin
        with self._lock:
            tokenizer_changed = new_config.tokenizer != self.config.tokenizer
            new_config.data = self.config.data
            self.config = new_config
            if tokenizer_changed:
                self._invalidate(tokenizer=True)

    def _invalidate(self, *, tokenizer: bool) -> None:
        self._generation += 1
        self.corpus = None
        if tokenizer:
            self.tokenizer = None

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
            spec = self.registry.tokenizer(self.config.tokenizer.plugin)

        def report(done: int, total: int) -> None:
            if cancel is not None and cancel():
                raise Cancelled("building the tokenizer was cancelled")
            if progress is not None:
                progress(done, total)

        report(0, 1)
        try:
            tokenizer = spec.build(tok_params, lambda: iter_text_chunks(text), report)
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError(f"build() returned {type(tokenizer).__name__}, not a lmstudio_app Tokenizer")
        except LMStudioError:
            raise
        except Exception as exc:  # plugin code: name the plugin instead of crashing
            owner = self.registry.owner("tokenizers", spec.name)
            raise PluginCallError(owner, f"building tokenizer {spec.name!r}", exc) from exc
        with self._lock:
            self._check_current(generation)
            self.tokenizer = tokenizer
            self.corpus = None  # token arrays always belong to the current tokenizer
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
        self._adopt_trainer(trainer)
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
            self._adopt_trainer(trainer)
            self.text, self.file_infos, self.using_demo, self.encoding = text, infos, using_demo, "utf-8"
            self._invalidate(tokenizer=True)
            self.tokenizer, self.corpus = tokenizer, corpus
            self.config = copy_config(trainer.config)
        return trainer

    def _adopt_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._trainer_predictor = None
        self._loaded_predictor = None
        self.loaded_run = None

    def load_run(self, run_dir: str | Path) -> None:
        """Open a finished (or paused elsewhere) run for probing: its model, tokenizer and config."""
        path = Path(run_dir)
        predictor = load_predictor(path, self.registry, self.config.train.device)
        config = load_config(path / "config.toml")
        with self._lock:
            self.trainer = None
            self._trainer_predictor = None
            self._loaded_predictor = predictor
            self.loaded_run = path
            self.config = config
            self._invalidate(tokenizer=True)
            self.tokenizer = predictor.tokenizer  # the run's own tokenizer, matching its model

    def predictor(self) -> Predictor | None:
        """The live trainer's predictor (it takes the trainer's lock), else a loaded run's."""
        if self.trainer is not None:
            if self._trainer_predictor is None:
                self._trainer_predictor = self.trainer.predictor()
            return self._trainer_predictor
        return self._loaded_predictor
