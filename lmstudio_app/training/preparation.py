"""Everything a run needs before its first step, and its state saved to and restored from checkpoints.

:func:`prepare_run` reads the corpus, builds (or loads) the tokenizer, tokenizes, builds the model
through the plugin registry, makes the optimisers and batch samplers and creates (or opens) the
run folder; :func:`restore_latest` and :func:`save_state` read and write checkpoints. The
:class:`~lmstudio_app.training.trainer.Trainer` calls these and itself only trains.

Under torchrun (``dist`` given) rank 0 alone builds the tokenizer and decides the run folder, and
sends both to the other ranks in memory: no rank depends on a shared filesystem for a new run,
and a tokenizer plugin that is not deterministic cannot give the ranks different vocabularies.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..config import RunConfig, TrainConfig, copy_config, validate_plugins
from ..data.corpus import BatchSampler, TokenizedCorpus, iter_text_chunks, tokenize_corpus
from ..data.coverage import check_coverage
from ..data.files import FileInfo, load_corpus_text
from ..devices import autocast_dtype, resolve_device, training_threads
from ..errors import CheckpointError, ConfigError, DataError, LMStudioError, TokenizerError
from ..inference.predictor import EmptyPromptError, Predictor
from ..inference.truth import TokenTruth, token_truth
from ..params import params_to_dict
from ..registry import plugin_call, reraise_plugin_failure
from ..resources import demo_corpus_path
from ..runs import checkpoints as ckpt
from ..runs import integrity
from ..runs.folder import RunDir, new_run_path
from ..runs.lock import RunLock
from ..runs.rng_state import capture_rng, restore_rng
from ..runs.snapshots import drop_snapshots_after
from ..tokenizer import Tokenizer
from . import distributed, faults, model_checks
from .distributed import DistInfo
from .optimizers import LrExtension, build_optimizers, extend_schedule
from .watch import choose_prompts

if TYPE_CHECKING:
    from ..registry import PluginRegistry

ProgressCallback = Callable[[str, int, int], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def micro_batch_size(cfg: TrainConfig, world_size: int = 1) -> int:
    """Sequences per forward pass on one rank; train.batch_size is the global batch of a step."""
    if world_size == 1 and cfg.batch_size % cfg.grad_accum:
        raise ConfigError(
            f"train.grad_accum: {cfg.grad_accum} does not divide train.batch_size {cfg.batch_size} "
            "(each micro-batch holds batch_size / grad_accum sequences)"
        )
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise ConfigError(
            f"train.batch_size: {cfg.batch_size} does not split over {world_size} ranks x train.grad_accum "
            f"{cfg.grad_accum} (each rank's micro-batch holds batch_size / (ranks x grad_accum) sequences)"
        )
    return cfg.batch_size // (world_size * cfg.grad_accum)


@dataclass
class PreparedRun:
    """What :func:`prepare_run` built; the Trainer adopts each field as an attribute."""

    config: RunConfig
    ignored_overrides: list[str]
    device: torch.device
    dtype: torch.dtype | None
    file_infos: list[FileInfo]
    tokenizer: Tokenizer
    corpus: TokenizedCorpus
    model: nn.Module
    model_owner: str
    optimizers: list[torch.optim.Optimizer]
    samplers: dict[str, BatchSampler]
    val_split: str  # "train" when there is too little held-out text to validate on
    run_dir: RunDir | None
    resumed: bool = False
    truth: TokenTruth | None = None  # the corpus's exact next-token odds, when a plugin knows them
    run_lock: RunLock | None = None  # held while this process writes the run folder (rank 0)
    notes: list[str] | None = None  # for the user: what was checked, cleaned or skipped


def prepare_run(
    config: RunConfig | None,
    registry: PluginRegistry,
    run_path: Path | None,
    *,
    resume: bool,
    write_run: bool,
    tokenizer: Tokenizer | None,
    corpus: TokenizedCorpus | None,
    progress: ProgressCallback | None,
    dist: DistInfo | None,
) -> PreparedRun:
    """Config, corpus, tokenizer, model, optimisers, samplers and run folder of a run (see Trainer)."""
    locks: list[RunLock] = []
    try:
        return _prepare(config, registry, run_path, resume=resume, write_run=write_run, tokenizer=tokenizer,
                        corpus=corpus, progress=progress, dist=dist, locks=locks)
    except BaseException:
        for lock in locks:  # a failed preparation leaves the folder free for the next try
            lock.release()
        raise


def _prepare(
    config: RunConfig | None,
    registry: PluginRegistry,
    run_path: Path | None,
    *,
    resume: bool,
    write_run: bool,
    tokenizer: Tokenizer | None,
    corpus: TokenizedCorpus | None,
    progress: ProgressCallback | None,
    dist: DistInfo | None,
    locks: list[RunLock],
) -> PreparedRun:
    main = dist is None or dist.is_main
    resumed: RunDir | None = None
    ignored: list[str] = []
    notes: list[str] = []
    if resume:
        resumed, config, ignored = _open_resumed(run_path, config, locks if main else None, notes)
        integrity.check_tokenizer(resumed)  # before minutes of tokenizing with it
        if tokenizer is None:
            tokenizer = resumed.load_tokenizer()
    else:
        if config is None:
            raise ConfigError("no config given for a new run")
        config = copy_config(config)  # later edits in the GUI must not reach a running trainer
        if write_run:  # rank 0 names the folder (a timestamp), checks it and tells the others
            run_path = distributed.from_main(lambda: _creatable(run_path), dist)
    tok_params, model_params = _settle_plugin_params(config, registry, dist)
    device, dtype = _set_up_process(config.train, dist)
    model_checks.check_memory(registry, config, model_params, None, device, dist)  # before minutes of tokenizing
    file_infos, tokenizer, corpus = _tokenizer_and_corpus(config, registry, tok_params, tokenizer, corpus,
                                                          progress, dist)
    fingerprint = integrity.corpus_fingerprint(corpus.train, corpus.val) if write_run or resumed else None
    if resumed is not None and fingerprint is not None and not integrity.check_corpus(resumed, fingerprint, [
            str(f) for f in config.data.files] or ["the demo corpus"]) and main:
        # A run made before fingerprints: record the data it continues on from now on.
        integrity.save_corpus_fingerprint(resumed, fingerprint, _file_records(file_infos))
    model = model_checks.build_checked_model(registry, config, model_params, tokenizer.vocab_size, device, dist)
    if dist is not None and dist.rank > 0:
        torch.manual_seed(config.train.seed + dist.rank)  # same weights, but each rank its own dropout masks
    optimizers = build_optimizers(model, config.train, device)
    samplers, val_split = _make_samplers(config.train, corpus, int(model.context_length), device, dist)
    truth = _truth(registry, tokenizer, corpus)
    config.watch = choose_prompts(config.watch, tokenizer, corpus, int(model.context_length),
                                  truth.spec.prompts if truth is not None else ())
    run_dir = _run_folder(config, tokenizer, resumed, run_path if write_run else None, dist)
    if run_dir is not None and resumed is None and main:
        locks.append(RunLock(run_dir.path).acquire())
        if fingerprint is not None:
            integrity.save_corpus_fingerprint(run_dir, fingerprint, _file_records(file_infos))
    return PreparedRun(
        config=config, ignored_overrides=ignored, device=device, dtype=dtype, file_infos=file_infos,
        tokenizer=tokenizer, corpus=corpus, model=model, model_owner=registry.owner("models", config.model.plugin),
        optimizers=optimizers, samplers=samplers, val_split=val_split, run_dir=run_dir, resumed=resumed is not None,
        truth=truth, run_lock=locks[0] if locks else None, notes=notes,
    )


def _file_records(infos: list[FileInfo]) -> list[dict[str, Any]]:
    """The files a run read, for corpus.json (and the message when they change)."""
    records = []
    for info in infos[:1000]:
        path, size = getattr(info, "path", None), getattr(info, "size_bytes", None)
        records.append({"path": str(path), **({"bytes": int(size)} if isinstance(size, int) else {})})
    return records


TRUTH_SAMPLE_TOKENS = 16_384  # of the training text, decoded for the truth plugins to recognise it


def _truth(registry: PluginRegistry, tokenizer: Tokenizer, corpus: TokenizedCorpus) -> TokenTruth | None:
    """The exact next-token odds of a synthetic corpus (the demo grammar's), if a plugin knows them."""
    sample = tokenizer.decode(corpus.train[:TRUTH_SAMPLE_TOKENS].tolist())
    spec = registry.truth_for(sample)
    if spec is None:
        return None
    try:
        return token_truth(spec, tokenizer, owner=registry.owner("truths", spec.name))
    except TokenizerError:  # this tokenizer merges tokens across documents: no exact odds for it
        return None


def _open_resumed(run_path: Path | None, requested: RunConfig | None, locks: list[RunLock] | None,
                  notes: list[str]) -> tuple[RunDir, RunConfig, list[str]]:
    """The run folder to continue, its config (with the resumable keys of ``requested``) and the
    keys of ``requested`` that a resumed run ignores. On the writing rank the folder is locked
    first (a second trainer is refused before any slow work) and a kill's leftovers are cleaned."""
    if run_path is None:
        raise CheckpointError("resume: no run folder given; name the run to continue")
    run = RunDir.open(run_path)
    if locks is not None:
        locks.append(RunLock(run.path).acquire())
        cleaned = integrity.clean_leftovers(run)
        if cleaned:
            notes.append(f"{run.path}: cleaned up after an interrupted write ({', '.join(cleaned[:3])})")
    config, ignored = run.resume_config(requested)
    return run, config, ignored


def _creatable(path: Path | None) -> Path:
    path = path or new_run_path()
    RunDir.check_creatable(path)  # fail now, not after minutes of tokenizing
    return path


def _settle_plugin_params(config: RunConfig, registry: PluginRegistry, dist: DistInfo | None) -> tuple[Any, Any]:
    """The validated tokenizer and model params, stored back into ``config`` with every default, so
    config.toml reproduces the run on its own; the batch split is checked here too, before minutes
    of tokenizing."""
    tok_params, model_params = validate_plugins(config, registry)
    config.tokenizer.params = params_to_dict(tok_params)
    config.model.params = params_to_dict(model_params)
    micro_batch_size(config.train, dist.world_size if dist else 1)
    return tok_params, model_params


def _set_up_process(cfg: TrainConfig, dist: DistInfo | None) -> tuple[torch.device, torch.dtype | None]:
    """Threads and seeds for this process; returns the device this rank trains on and its autocast dtype."""
    # The thread count is process-wide: "0" must restore the default after an earlier run.
    torch.set_num_threads(training_threads(cfg.threads))
    seed_everything(cfg.seed)  # every rank builds the same initial weights
    device = distributed.device_for_rank(resolve_device(cfg.device), dist)
    return device, autocast_dtype(device, cfg.dtype)


def _tokenizer_and_corpus(
    config: RunConfig,
    registry: PluginRegistry,
    tok_params: Any,
    tokenizer: Tokenizer | None,
    corpus: TokenizedCorpus | None,
    progress: ProgressCallback | None,
    dist: DistInfo | None,
) -> tuple[list[FileInfo], Tokenizer, TokenizedCorpus]:
    """The files read, the tokenizer and the token arrays; what is given is used as it is."""

    def reporter(stage: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(stage, done, total))

    file_infos: list[FileInfo] = []  # the files read (empty when given a tokenizer and corpus)
    text = ""
    if tokenizer is None or corpus is None:
        files = config.data.files or [str(demo_corpus_path())]
        text, file_infos = load_corpus_text(files, readers=registry.readers_by_extension(),
                                            progress=reporter("reading"))
    if tokenizer is None:
        def build() -> Tokenizer:
            return registry.build_tokenizer(config.tokenizer.plugin, tok_params, lambda: iter_text_chunks(text),
                                            reporter("tokenizer"))

        tokenizer = build() if dist is None else _tokenizer_from_main(build, dist)
    if corpus is None:
        corpus = tokenize_corpus(tokenizer, text, config.data.val_fraction, config.data.val_split,
                                 progress=reporter("tokenizing"))
    if corpus.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"the corpus was tokenized with {corpus.vocab_size} token IDs but the tokenizer has "
            f"{tokenizer.vocab_size}; tokenize the corpus again"
        )
    check_coverage(tokenizer, corpus, text)  # mostly <unk>, or whole lines as tokens: stop before training
    return file_infos, tokenizer, corpus


def _tokenizer_from_main(build: Callable[[], Tokenizer], dist: DistInfo) -> Tokenizer:
    """Rank 0's tokenizer on every rank, sent as its JSON."""
    made: list[Tokenizer] = []

    def payload() -> tuple[str, str]:
        made.append(build())
        return made[0].to_json(), made[0].kind

    data, kind = distributed.from_main(payload, dist)
    return made[0] if made else Tokenizer.from_json(data, kind=kind, source="rank 0's tokenizer")


def _run_folder(config: RunConfig, tokenizer: Tokenizer, resumed: RunDir | None, new_path: Path | None,
                dist: DistInfo | None) -> RunDir | None:
    """The run folder written to: the resumed one, a new one at ``new_path`` (rank 0 creates it), or None without a run folder."""
    if resumed is not None:
        return resumed  # its config.toml is updated once the checkpoint is restored (save_resumed_config)
    if new_path is None:
        return None
    main = dist is None or dist.is_main
    return RunDir.create(new_path, config, tokenizer) if main else RunDir(new_path)  # rank 0 writes


def save_resumed_config(run_dir: RunDir, config: RunConfig, dist: DistInfo | None) -> None:
    """A resumed run's config.toml with the resumable keys it now trains with (e.g. a higher
    max_steps); written only after the checkpoint was restored, so a refused resume changes nothing."""
    if (dist is None or dist.is_main) and config.to_dict() != run_dir.load_config().to_dict():
        run_dir.save_config(config)


def _make_samplers(cfg: TrainConfig, corpus: TokenizedCorpus, ctx: int, device: torch.device,
                   dist: DistInfo | None) -> tuple[dict[str, BatchSampler], str]:
    """Separate random streams, so evaluating never changes which batches training sees."""
    micro = micro_batch_size(cfg, dist.world_size if dist else 1)
    rank = dist.rank if dist else 0

    def sampler(tokens: np.ndarray, stream: str, split: str) -> BatchSampler:
        return BatchSampler(tokens, micro, ctx, distributed.sampler_seed(cfg.seed, stream, rank), device, split)

    samplers = {"train": sampler(corpus.train, "train", "train")}
    try:
        samplers["val"] = sampler(corpus.val, "val", "val")
        val_split = "val"
    except DataError:  # no (or too little) held-out text: validate on training text
        samplers["val"] = sampler(corpus.train, "val", "train")
        val_split = "train"
    samplers["train_eval"] = sampler(corpus.train, "train_eval", "train")
    return samplers, val_split


# -- resuming ---------------------------------------------------------------------------------


def save_state(run_dir: RunDir, model: nn.Module, optimizers: list[torch.optim.Optimizer], step: int,
               samplers: Mapping[str, BatchSampler], extra: dict[str, Any], device: torch.device,
               dist: DistInfo | None) -> Path:
    """Write a checkpoint; under torchrun every rank calls it (to gather its random streams) and rank 0 writes."""
    ranks = distributed.gather_rank_streams(samplers, device, dist)
    if dist is not None and not dist.is_main:
        return ckpt.checkpoint_path(run_dir, step)  # where rank 0 writes it
    if ranks is not None:
        extra = {**extra, "ranks": ranks}
    return ckpt.save_checkpoint(run_dir, model=model, optimizers=optimizers, step=step,
                                rng=capture_rng(samplers), extra=extra)


@dataclass
class Restored:
    """What :func:`restore_latest` read besides the weights, optimiser state and random streams."""

    step: int
    elapsed_s: float
    val_loss: float | None
    grad_scaler: dict[str, Any] | None
    warning: str | None  # set when the batches had to be re-seeded (another number of ranks)
    lr_extension: LrExtension | None = None  # the schedule of a run extended past its horizon


def restore_latest(run_dir: RunDir, config: RunConfig, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                   samplers: Mapping[str, BatchSampler], device: torch.device,
                   dist: DistInfo | None) -> Restored | None:
    """Load the latest checkpoint into the given objects; None (and metrics cleared) if there is none.

    Everything is read and checked (``latest`` vs the step folders, state.json vs its folder's
    name, config.toml vs the config beside the weights vs their shapes) before the first byte of
    the run folder is changed: a refused resume leaves the folder exactly as it was."""
    main = dist is None or dist.is_main
    path = integrity.resume_checkpoint(run_dir)
    if path is None:  # stopped before the first checkpoint: start over, identically seeded
        if main:
            run_dir.truncate_history(0)
            drop_snapshots_after(run_dir, -1)
        return None
    state = ckpt.read_state(path)
    integrity.check_config_matches_checkpoint(run_dir, config.to_dict(), state, path)
    state = ckpt.load_checkpoint(path, model, optimizers, map_location="cpu")
    step = state["step"]
    restore_rng(state["rng"], samplers)  # rank 0's streams (all of them in a single process)
    extra = state["extra"]
    warning = distributed.restore_rank_streams(extra.get("ranks"), samplers, config.train.seed, step, device, dist)
    extension, note = extend_schedule(config.train, step, _saved_max_steps(state), extra.get("lr_extension"))
    if note is not None:
        warning = f"{warning}; {note}" if warning else note
    if main:
        run_dir.truncate_history(step)
        drop_snapshots_after(run_dir, step)
    return Restored(step=step, elapsed_s=float(extra.get("elapsed_s", 0.0)), val_loss=extra.get("val_loss"),
                    grad_scaler=extra.get("grad_scaler"), warning=warning, lr_extension=extension)


def _saved_max_steps(state: dict[str, Any]) -> int | None:
    """The train.max_steps the checkpoint was trained towards (from the config beside it)."""
    train = state.get("config", {}).get("train")
    value = train.get("max_steps") if isinstance(train, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# -- evaluations ------------------------------------------------------------------------------


def mean_loss(model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sampler: BatchSampler,
              count: int, device: torch.device, dist: DistInfo | None, owner: str) -> float | None:
    """Mean ``loss`` over ``count`` batches in eval mode (over all ranks under torchrun); None if out of memory."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = torch.zeros((), device=device)
            for _ in range(count):
                total += loss(*sampler.sample()).float()
            if dist is not None:  # every rank evaluated its own batches: report their mean
                distributed.all_reduce_mean(total)
            return float(total) / count
    except LMStudioError:
        raise
    except Exception as exc:
        if not faults.is_out_of_memory(exc):
            reraise_plugin_failure(owner, "evaluation", exc)
    except BaseException as exc:  # sys.exit() or KeyboardInterrupt from the model's code: its error
        reraise_plugin_failure(owner, "evaluation", exc)
    finally:
        model.train(was_training)
    faults.free_memory(device)  # outside the except block: the failed batch is gone
    return None


def sample_text(predictor: Predictor, count: int, seed: int, fallback_prompt: str, owner: str) -> str:
    """A generated continuation from a fresh line, or from ``fallback_prompt`` without a newline token."""

    with plugin_call(owner, "generating a sample"):
        try:
            return predictor.generate("", max_tokens=count, seed=seed)
        except EmptyPromptError:
            return fallback_prompt + predictor.generate(fallback_prompt, max_tokens=count, seed=seed)
