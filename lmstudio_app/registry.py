"""Plugin discovery and the registry of tokenizers, models, corpus readers and truths.

Plugins come from three places, loaded in this order (the first to provide a name wins):

1. entry points in the ``lmstudio`` group: the built-in plugin (entry point ``builtins``,
   source ``"built-in"``) first, then installed distributions (source ``"installed"``);
2. the user plugin folder, :func:`lmstudio_app.settings.user_plugin_dir` (source ``"folder"``);
3. folders passed explicitly (``--plugins-dir``; source ``"folder"``).

A broken plugin never takes the app down. pluggy's own entry-point loader lets import errors
escape and one raising hook implementation aborts the whole hook call, so this module imports
every plugin itself and calls the hooks one implementation at a time, recording each failure
as a :class:`~lmstudio_app.specs.PluginError` for the plugins dialog and ``lmstudio plugins``.
A plugin that hangs is a failure too: each import and hook of a third-party plugin runs on a
daemon thread and is skipped after ``LMSTUDIO_PLUGIN_TIMEOUT`` seconds without progress
(:func:`import_timeout_s`). Strict mode (``LMSTUDIO_STRICT_PLUGINS=1``) re-raises the first
failure instead, for authors.

Calling a plugin's code later (building a tokenizer or a model, a forward pass) goes through
:func:`plugin_call` (or :func:`plugin_exits`), so anything it raises names the plugin instead of
escaping as a traceback: ``sys.exit()`` and a KeyboardInterrupt raised by code too, while the
person's Ctrl-C passes (:func:`is_user_interrupt`). :meth:`PluginRegistry.build_tokenizer` and
:meth:`PluginRegistry.build_model` also check what the factory returned,
:func:`check_model_output` and :func:`checked_forward` what a model's forward answers (shape
``(B, T, V)``, floating, causal), and :meth:`PluginRegistry.truth_for` what each ``recognises``
answered.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import os
import re
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import pluggy

from . import hookspecs
from .errors import ConfigError, LMStudioError, PluginCallError, TrainingError
from .settings import load_settings, user_plugin_dir
from .specs import CorpusReaderSpec, ModelSpec, PluginError, PluginInfo, TokenizerSpec, TruthSpec
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .model_api import LanguageModel

ENTRY_POINT_GROUP = "lmstudio"
BUILTIN_PLUGIN = "builtins"  # the entry-point name of the built-in plugin; it cannot be disabled
PLUGINS_ENV = "LMSTUDIO_PLUGINS"  # "none" = safe mode (built-ins only); "a,b" = only these
STRICT_ENV = "LMSTUDIO_STRICT_PLUGINS"

# hook name, key in PluginInfo.provides, label used in messages, the spec type it must return
_HOOKS: tuple[tuple[str, str, str, type], ...] = (
    ("lmstudio_tokenizers", "tokenizers", "tokenizer", TokenizerSpec),
    ("lmstudio_models", "models", "model", ModelSpec),
    ("lmstudio_corpus_readers", "corpus_readers", "corpus reader", CorpusReaderSpec),
    ("lmstudio_truths", "truths", "truth", TruthSpec),
)
# Kinds every PluginInfo.provides lists (empty or not); the others appear once a plugin has one.
_LISTED_KINDS = ("tokenizers", "models", "corpus_readers")
_KIND_ALIASES = {
    "tokenizer": "tokenizers",
    "model": "models",
    "reader": "corpus_readers",
    "corpus_reader": "corpus_readers",
    "truth": "truths",
}
_LABELS = {kind: label for _, kind, label, _ in _HOOKS}


def is_user_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is the person's Ctrl-C rather than plugin code raising KeyboardInterrupt.

    A signal handler runs in the main thread only, so a KeyboardInterrupt anywhere else came
    from code. In the main thread, a SIGINT handler written in Python (the CLI installs one, see
    :func:`user_interrupts_marked`; ``lmstudio train`` its own) shows up in the traceback as the
    innermost frames: the interrupt is the person's when that handler's frame is there. Under
    Python's default handler the two cannot be told apart, and a real Ctrl-C must always work.
    """
    if not isinstance(exc, KeyboardInterrupt):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGINT)
    code = getattr(getattr(handler, "__func__", handler), "__code__", None)
    if code is None:  # the default (C) handler, or one we cannot see into: trust it
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # what Python's default handler does, but visible in the traceback


@contextmanager
def user_interrupts_marked() -> Iterator[None]:
    """Install a Python SIGINT handler (in the main thread) so that :func:`is_user_interrupt` can
    tell the person's Ctrl-C from a plugin raising KeyboardInterrupt; the previous one comes back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # someone else chose (SIG_IGN, a custom handler)
        yield
        return
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# What the backends' runtime errors say when a peer is gone (training/distributed.py knows the same)
_DIST_MESSAGES = re.compile(r"gloo|nccl|processgroup|c10d|connection (closed|reset) by peer|broken pipe",
                            re.IGNORECASE)


def is_distributed_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from the data-parallel communication (another rank died or stalled),
    not from a plugin's code: torch.distributed's own errors, or a backend's runtime error while a
    process group is up."""
    torch = sys.modules.get("torch")  # never import torch here: listing plugins must stay fast
    if torch is None or not isinstance(exc, RuntimeError):
        return False
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    return isinstance(exc, dist.DistError) or bool(_DIST_MESSAGES.search(str(exc)))


def plugin_failure(owner: str, what: str, exc: BaseException) -> LMStudioError:
    """The error to raise for ``exc`` escaping plugin code while doing ``what``.

    Normally a :class:`PluginCallError` naming ``owner``: *any* BaseException (``sys.exit()``, a
    KeyboardInterrupt raised by code, a native library's ``PanicException``) is the plugin's
    error. A failure of the data-parallel communication is not the plugin's: a
    :class:`TrainingError` that says another rank stopped. (Callers pass the person's own Ctrl-C
    and :class:`LMStudioError` through before asking: see :func:`reraise_plugin_failure`.)
    """
    if is_distributed_failure(exc):
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return TrainingError(  # no plugin named: the error is not in its code (see distributed.rank_failure)
            f"another rank stopped or stopped responding during {what} ({type(exc).__name__}: {first}); "
            "the communication between the data-parallel ranks failed, not the model"
        )
    return PluginCallError(owner, what, exc)


def reraise_plugin_failure(owner: str, what: str, exc: BaseException) -> NoReturn:
    """Raise what ``exc`` from plugin code means; call it from an ``except`` clause.

    The person's Ctrl-C (:func:`is_user_interrupt`), ``GeneratorExit`` (a generator being closed)
    and :class:`LMStudioError` (it already explains itself) are raised again unchanged;
    everything else becomes :func:`plugin_failure`.
    """
    if isinstance(exc, (LMStudioError, GeneratorExit)) or is_user_interrupt(exc):
        raise exc
    raise plugin_failure(owner, what, exc) from exc


@contextmanager
def plugin_call(owner: str, what: str) -> Iterator[None]:
    """Run plugin code: anything it raises becomes a :class:`PluginCallError` naming ``owner``.

    ``what`` says what the plugin was doing ("building model 'gpt'"). Not only ``Exception``:
    ``sys.exit()``, a KeyboardInterrupt raised by code and a native library's panic are the
    plugin's errors too (they used to end training with exit code 0 and no message, or read as
    the user's Ctrl-C). Passed through unchanged: an :class:`LMStudioError` (the plugin, or the
    core it called, already explains itself), the person's own Ctrl-C and ``GeneratorExit``.
    """
    try:
        yield
    except BaseException as exc:
        reraise_plugin_failure(owner, what, exc)


@contextmanager
def plugin_exits(owner: str, what: str) -> Iterator[None]:
    """Like :func:`plugin_call` for the BaseExceptions that are not an ``Exception`` only.

    For callers that handle plugin code's ordinary exceptions themselves (out of memory retried
    in the training step, a corpus reader's error naming the file) but must not let
    ``sys.exit()`` or a KeyboardInterrupt raised by the plugin end the process or read as Ctrl-C.
    """
    try:
        yield
    except Exception:
        raise
    except BaseException as exc:
        reraise_plugin_failure(owner, what, exc)


def build_model_from_spec(spec: ModelSpec, owner: str, params: Any, vocab_size: int) -> LanguageModel:
    """``spec``'s model, checked to be a module with a ``context_length``; failures name ``owner``.

    :meth:`PluginRegistry.build_model` for a spec looked up by name; called directly by code that
    was handed the spec (the model preview, which builds it on the meta device).
    """
    from torch import nn  # lazy: listing plugins (``lmstudio plugins``) must not import torch

    with plugin_call(owner, f"building model {spec.name!r}"):
        model = spec.build(params, vocab_size)
        if not isinstance(model, nn.Module) or int(getattr(model, "context_length", 0) or 0) < 1:
            raise TypeError(f"build() returned {type(model).__name__}, not a LanguageModel with a context_length")
    return model


# ---- checking a model's output ------------------------------------------------------------

_CHECK_TOKENS = 32  # the longest sequence of the one-off check: cheap for any model
_CAUSAL_RTOL = 1e-4  # of the logits' magnitude: float noise between batch rows is far below
_checked_models: weakref.WeakSet[Any] = weakref.WeakSet()  # models whose output was checked once


class ModelOutputError(PluginCallError):
    """A model's forward returned something that is not ``(batch, time, vocab_size)`` floating
    logits, or let a position see later tokens; the message names the plugin."""

    def __init__(self, plugin: str | None, problem: str, when: str) -> None:
        LMStudioError.__init__(self, f"{_who(plugin)}: {problem} ({when})")
        self.plugin = plugin or ""
        self.original = ValueError(problem)


def _who(plugin: str | None) -> str:
    return f"plugin {plugin!r}" if plugin else "the model"


def _output_problem(logits: Any, idx_shape: tuple[int, ...], vocab_size: int) -> str | None:
    """What is wrong with ``forward``'s return value for token IDs of ``idx_shape`` (None: fine)."""
    import torch  # lazy: listing plugins must not import torch

    if not isinstance(logits, torch.Tensor):
        return f"its model's forward() returned {type(logits).__name__}, not a tensor of logits"
    expected = (*idx_shape, vocab_size)
    if tuple(logits.shape) != expected:
        got = tuple(logits.shape)
        hint = ""
        if len(got) == 3 and got[:2] == expected[1::-1] and got[2] == vocab_size:
            hint = ": batch and time are swapped"
        elif len(got) == 3 and got[:2] == expected[:2]:
            hint = f": {got[2]} scores per position but the tokenizer has {vocab_size} token IDs"
        return (
            f"its model's forward() returned logits of shape {got} for token IDs of shape {tuple(idx_shape)}; "
            f"expected {expected} = (batch, time, vocab_size){hint}"
        )
    if not logits.is_floating_point():
        return f"its model's forward() returned logits of dtype {logits.dtype}; expected a floating-point dtype"
    return None


def _with_probes(idx: Any, vocab_size: int) -> tuple[Any, list[tuple[int, int]]]:
    """``idx`` (B, T) plus copies of its first row with one token changed (the last, the middle):
    the rows to run, and (row, position) pairs whose logits before ``position`` must equal row 0's.
    A row is added when the batch would have as many rows as positions, which would hide swapped
    axes."""
    import torch

    base = idx[0]
    steps = int(idx.shape[1])
    rows, changed = [idx], []
    if vocab_size > 1 and steps > 1:
        for position in sorted({steps - 1, steps // 2}):
            row = base.clone()
            row[position] = (row[position] + 1) % vocab_size
            changed.append((int(idx.shape[0]) + len(rows) - 1, position))
            rows.append(row.unsqueeze(0))
    if sum(int(r.shape[0]) for r in rows) == steps:
        rows.append(base.unsqueeze(0))
    return torch.cat(rows), changed


def _causality_problem(logits: Any, changed: list[tuple[int, int]]) -> str | None:
    logits = logits.detach().float()
    tolerance = _CAUSAL_RTOL * (1.0 + (float(logits.abs().max()) if logits.numel() else 0.0))
    for row, position in changed:
        moved = (logits[row, :position] - logits[0, :position]).abs().amax(dim=-1)
        if moved.numel() and float(moved.max()) > tolerance:
            earliest = int((moved > tolerance).nonzero()[0])
            return (
                f"its model is not causal: the logits at position {earliest} changed when only the token "
                f"at position {position} did, so it trains on the tokens it should predict "
                "(mask attention to later positions)"
            )
    return None


def _probed_forward(model: Any, idx: Any, owner: str | None, vocab_size: int, when: str) -> Any:
    """``model(idx)`` in one forward pass that also checks the answer (shape, dtype, causality)."""
    batch, changed = _with_probes(idx, vocab_size)
    with plugin_exits(owner or "the model", f"checking its model's output ({when})"):
        logits = model(batch)
    problem = _output_problem(logits, tuple(batch.shape), vocab_size) or _causality_problem(logits, changed)
    if problem is not None:
        raise ModelOutputError(owner, problem, when)
    if changed:  # causality was checked too (not on a single token): no need to look again
        _checked_models.add(model)
    return logits[: idx.shape[0]]


def check_model_output(model: Any, owner: str | None, vocab_size: int, when: str) -> None:
    """Check once per model object that its forward gives ``(B, T, vocab_size)`` floating logits
    and that no position sees a later token; :class:`ModelOutputError` naming ``owner`` if not.

    One forward pass on three short random sequences, in eval mode without gradients and without
    touching the global random streams (a resumed run must see the same batches): the second
    differs from the first only in its last token, the third in its middle one, so the logits
    before that position must be the same. Cheap (``_CHECK_TOKENS`` tokens): it runs before the
    first training step. An exception from the model is left to the first step to report.
    """
    import torch  # lazy: listing plugins must not import torch

    if model in _checked_models:
        return
    context = int(getattr(model, "context_length", 0) or 0)
    steps = max(1, min(context, _CHECK_TOKENS))
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(20240607)
    idx = torch.randint(vocab_size, (1, steps), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _probed_forward(model, idx, owner, vocab_size, when)
    except ModelOutputError:
        raise
    except Exception:  # the model's own failure: the training step names it, with its usual wording
        return
    finally:
        model.train(was_training)


def checked_forward(model: Any, idx: Any, owner: str | None, vocab_size: int) -> Any:
    """``model(idx)``, checked: the shape and dtype of every answer (free), and causality in the
    first answer of each model (the same forward pass, with two more rows); ``sys.exit()`` or a
    KeyboardInterrupt from the model's code is the plugin's error (:func:`plugin_exits`)."""
    if model not in _checked_models and idx.dim() == 2 and idx.shape[0] >= 1:
        return _probed_forward(model, idx, owner, vocab_size, "its first prediction")
    with plugin_exits(owner or "the model", "running the model on a prompt"):
        logits = model(idx)
    problem = _output_problem(logits, tuple(idx.shape), vocab_size)
    if problem is not None:
        raise ModelOutputError(owner, problem, "predicting")
    return logits


# ---- bounded loading -----------------------------------------------------------------------

TIMEOUT_ENV = "LMSTUDIO_PLUGIN_TIMEOUT"  # seconds a plugin may import without progress; 0 = no limit
TIMEOUT_SETTING = "plugin_import_timeout_s"  # the same in settings.json (the environment wins)
DEFAULT_IMPORT_TIMEOUT_S = 5.0
_HARD_LIMIT_FACTOR = 12  # an import that keeps importing modules is still given up after this many timeouts
_POLL_S = 0.05


class PluginTimeout(Exception):
    """A plugin's import (or hook) was still running after the limit; it is skipped."""

    def __init__(self, message: str, stack: str) -> None:
        super().__init__(message)
        self.stack = stack  # where the stuck thread was, for ``lmstudio plugins --verbose``


def import_timeout_s() -> tuple[float, str | None]:
    """The import limit in seconds (0: none) and, for a malformed setting, the problem (the
    default is used then: a typo in a setting must not stop the app from starting)."""
    raw: Any = os.environ.get(TIMEOUT_ENV)
    where = TIMEOUT_ENV
    if raw is None or not str(raw).strip():
        raw, where = load_settings().get(TIMEOUT_SETTING), f"settings.json {TIMEOUT_SETTING}"
        if raw is None:
            return DEFAULT_IMPORT_TIMEOUT_S, None
    try:
        value = float(raw)
        if isinstance(raw, bool) or not value >= 0 or value == float("inf"):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_IMPORT_TIMEOUT_S, (
            f"{where}: {str(raw)[:40]!r} is not a number of seconds >= 0; "
            f"using {DEFAULT_IMPORT_TIMEOUT_S:g} s"
        )
    return value, None


def _position(frame: Any) -> tuple[str, int, str]:
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _loading(position: tuple[str, int, str]) -> bool:
    """Whether a thread stands in the import machinery itself, loading a module (a C extension's
    initialisation runs there, for seconds in torch's case), rather than waiting for a lock."""
    filename, _, name = position
    return filename.startswith("<frozen importlib") and "lock" not in name and name != "acquire"


def _run_bounded(function: Callable[[], Any], timeout: float, doing: str, name: str) -> tuple[bool, Any]:
    """``(True, function())``, or ``(False, what it raised)``, run on a daemon thread;
    ``(False, PluginTimeout)`` when it has made no progress for ``timeout`` seconds.

    Progress: a module was imported (by anyone: a plugin waiting for another thread's import of
    torch waits on progress), or the thread stands at a line it never stood at before, or in the
    import machinery loading a module (a C extension's initialisation runs there, for seconds in
    torch's case). One that sleeps, loops, or waits on a socket keeps coming back to the same few
    lines. Whatever it does, it is given up after ``_HARD_LIMIT_FACTOR`` times the limit. A thread
    that never finishes is left behind: it is a daemon (the process can still exit) and holds
    only the import lock of the module it is stuck in, which nothing else imports. The person's
    Ctrl-C while waiting is raised as usual; anything the plugin raised, KeyboardInterrupt and
    SystemExit included, is returned (with ``timeout`` 0, run in this thread, the same holds).
    """
    if timeout <= 0:
        try:
            return True, function()
        except BaseException as exc:
            if is_user_interrupt(exc):
                raise
            return False, exc
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # a thread's KeyboardInterrupt is never the person's Ctrl-C
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"lmstudio plugin {name}", daemon=True)
    started = last_progress = time.monotonic()
    seen: set[tuple[str, int, str]] = set()
    modules = len(sys.modules)
    thread.start()
    while True:
        thread.join(_POLL_S)
        if not thread.is_alive():
            break
        now = time.monotonic()
        if len(sys.modules) != modules:
            modules, last_progress = len(sys.modules), now
        frame = sys._current_frames().get(thread.ident or -1)
        if frame is not None:
            position = _position(frame)
            if position not in seen or _loading(position):
                seen.add(position)
                last_progress = now
        del frame  # a frame kept across polls would keep the stuck thread's locals alive
        if now - last_progress >= timeout or now - started >= timeout * _HARD_LIMIT_FACTOR:
            frame = sys._current_frames().get(thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            return False, PluginTimeout(
                f"still {doing} after {now - started:.0f} s; skipped (limit {timeout:g} s without progress: "
                f"{TIMEOUT_ENV} or {TIMEOUT_SETTING} in settings.json)",
                stack,
            )
    if "error" in outcome:
        return False, outcome["error"]
    return True, outcome["value"]


def safe_mode_active() -> bool:
    """True when ``LMSTUDIO_PLUGINS=none``: only the built-in plugin loads (the GUI shows a banner)."""
    return os.environ.get(PLUGINS_ENV, "").strip().lower() == "none"


def _allowed_third_party() -> frozenset[str] | None:
    """Third-party plugin names allowed by ``LMSTUDIO_PLUGINS``; None means all of them."""
    raw = os.environ.get(PLUGINS_ENV, "").strip()
    if not raw or raw.lower() == "all":
        return None
    if raw.lower() == "none":
        return frozenset()
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def _strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(exc: BaseException) -> str:
    """``"ImportError: No module named 'foo'"``; multi-line messages (pluggy's) are joined."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hook_location(function: Callable[..., Any]) -> str:
    """A traceback-style pointer to a hook implementation, for errors found without an exception."""
    code = getattr(function, "__code__", None)
    if code is None:
        return ""
    return f'  File "{code.co_filename}", line {code.co_firstlineno}, in {code.co_name}\n'


def _new_info(name: str, version: str, source: str, location: str) -> PluginInfo:
    return PluginInfo(name, version, source, location, provides={kind: [] for kind in _LISTED_KINDS})


def _describe_owner(info: PluginInfo) -> str:
    return "built-in" if info.source == "built-in" else f"plugin {info.name!r}"


def _source_path(plugin: object) -> Path | None:
    """The file (or package folder) a plugin module was imported from, if any."""
    filename = getattr(plugin, "__file__", None)
    if not isinstance(filename, str):
        return None
    path = Path(filename).resolve()
    return path.parent if path.name == "__init__.py" else path


def _import_plugin_file(entry: Path) -> ModuleType:
    """Import a plugin file or package under a module name unique to its path.

    Two folders may both hold ``my_plugin.py``; hashing the resolved path into the module name
    keeps them apart. The module goes into ``sys.modules`` before it runs because dataclasses
    (and ``typing.get_type_hints`` on params classes) look their module up there.
    """
    resolved = entry.resolve()
    stem = re.sub(r"\W", "_", entry.stem if entry.is_file() else entry.name)
    digest = hashlib.sha1(str(resolved).encode("utf-8")).hexdigest()[:10]
    module_name = f"lmstudio_plugin_{stem}_{digest}"
    for loaded in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
        del sys.modules[loaded]  # a fresh discover() re-reads the file
    if entry.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, resolved / "__init__.py", submodule_search_locations=[str(resolved)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"{entry}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _import_folder_plugin(entry: Path, info: PluginInfo) -> ModuleType:
    """Import a plugin found in a folder; its ``__version__`` becomes ``info.version``."""
    module = _import_plugin_file(entry)
    info.version = str(getattr(module, "__version__", "unknown"))
    return module


def _spec_problem(hook_name: str, item: Any, spec_type: type) -> str | None:
    """What is wrong with one item of a hook's list (None: it is a usable ``spec_type``)."""
    if not isinstance(item, spec_type):
        return f"{hook_name}() returned {item!r:.80} in its list, expected {spec_type.__name__}"
    if not isinstance(item.name, str) or not item.name.strip():
        return f"{hook_name}() returned a {spec_type.__name__} with an empty name"
    if spec_type in (TokenizerSpec, ModelSpec) and not dataclasses.is_dataclass(item.params):
        return f"{item.name!r}: params must be a dataclass of param() fields, got {item.params!r}"
    factories = {CorpusReaderSpec: ("read",), TruthSpec: ("documents", "recognises")}
    for attribute in factories.get(spec_type, ("build",)):
        if not callable(getattr(item, attribute)):
            return f"{item.name!r}: its {attribute} is not callable"
    if spec_type is CorpusReaderSpec and (
        not isinstance(item.extensions, (tuple, list))
        or not all(isinstance(e, str) and e for e in item.extensions)
    ):
        return f"{item.name!r}: extensions must be a tuple of strings like ('.md',)"
    if spec_type is TruthSpec and (
        isinstance(item.prompts, str)
        or not isinstance(item.prompts, Sequence)
        or not all(isinstance(p, str) for p in item.prompts)
    ):
        return f"{item.name!r}: prompts must be a sequence of strings like ('the cat',)"
    return None


class PluginRegistry:
    """Every loaded plugin and the tokenizers, models, corpus readers and truths they provide."""

    def __init__(self, *, strict: bool = False) -> None:
        self.plugins: list[PluginInfo] = []  # loaded or failed, enabled or disabled
        self.errors: list[PluginError] = []
        self._strict = strict
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._specs: dict[str, dict[str, Any]] = {kind: {} for _, kind, _, _ in _HOOKS}
        self._owners: dict[str, dict[str, PluginInfo]] = {kind: {} for _, kind, _, _ in _HOOKS}
        self._extensions: dict[str, CorpusReaderSpec] = {}
        self._seen_paths: set[Path] = set()
        self._ids = itertools.count(2)  # suffixes for repeated plugin names
        self._timeout = 0.0  # seconds a plugin may import without progress (discover() sets it)

    @classmethod
    def discover(
        cls,
        plugins_dirs: Sequence[str | Path] = (),
        *,
        use_entry_points: bool = True,
        use_user_dir: bool = True,
        disabled: Collection[str] = (),
        strict: bool | None = None,
        import_timeout: float | None = None,
    ) -> PluginRegistry:
        """Find and load plugins; ``strict=None`` reads ``LMSTUDIO_STRICT_PLUGINS``.

        Each plugin's import and each of its hooks runs with a limit (``import_timeout`` seconds
        without progress; None reads :func:`import_timeout_s`, 0 means none): one still running
        then is recorded as failed ("still importing after 5 s") and skipped, and the rest load.
        """
        registry = cls(strict=_strict_from_env() if strict is None else strict)
        if import_timeout is None:
            import_timeout, problem = import_timeout_s()
            if problem is not None:
                registry.errors.append(PluginError("settings", "settings", problem, ""))
        registry._timeout = import_timeout
        allowed = _allowed_third_party()
        switched_off = set(disabled) - {BUILTIN_PLUGIN}

        def wanted(name: str) -> bool:
            return (allowed is None or name in allowed) and name not in switched_off

        if use_entry_points:
            registry._load_entry_points(wanted)
        if use_user_dir:
            registry._load_folder(user_plugin_dir(), wanted, must_exist=False)
        for folder in plugins_dirs:
            registry._load_folder(Path(folder).expanduser(), wanted, must_exist=True)
        return registry

    # ---- loading ---------------------------------------------------------------------------

    def _load_entry_points(self, wanted: Callable[[str], bool]) -> None:
        found = sorted(
            entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name != BUILTIN_PLUGIN, ep.name)
        )
        for ep in found:
            builtin = ep.name == BUILTIN_PLUGIN
            version = ep.dist.version if ep.dist is not None else "unknown"
            info = _new_info(ep.name, version, "built-in" if builtin else "installed", ep.value)
            self._load(info, builtin or wanted(ep.name), ep.load)

    def _load_folder(self, folder: Path, wanted: Callable[[str], bool], *, must_exist: bool) -> None:
        if not folder.is_dir():
            if must_exist:
                message = f"{folder}: plugins folder not found"
                self.errors.append(PluginError(str(folder), "folder", message, ""))
                if self._strict:
                    raise ConfigError(message)
            return
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            is_module = entry.is_file() and entry.suffix == ".py"
            is_package = entry.is_dir() and (entry / "__init__.py").is_file()
            if not (is_module or is_package) or entry.resolve() in self._seen_paths:
                continue
            self._seen_paths.add(entry.resolve())
            name = entry.stem if is_module else entry.name
            info = _new_info(name, "unknown", "folder", str(entry))
            self._load(info, wanted(name), partial(_import_folder_plugin, entry, info))

    def _load(self, info: PluginInfo, enabled: bool, load: Callable[[], object]) -> None:
        """Import one plugin with ``load()`` and add it; a disabled one is only listed, and an
        import failure is recorded (SystemExit too: a plugin module calling exit() at import)."""
        if not enabled:
            info.enabled = False
            self.plugins.append(info)
            return
        # SystemExit or KeyboardInterrupt at import is the plugin's failure, as is hanging there.
        # The built-in plugin is part of the app: never cut off (on a busy machine its first
        # import of torch could look stuck, and without it nothing trains).
        loaded, plugin = _run_bounded(load, self._limit_for(info), "importing", info.name)
        if not loaded:
            self.plugins.append(info)
            self._record(info, plugin)
            return
        self._add(plugin, info)

    def _limit_for(self, info: PluginInfo) -> float:
        return 0.0 if info.source == "built-in" else self._timeout

    def register_module(self, module: ModuleType, name: str, source: str) -> None:
        """Add an already-imported module (or any object with hook functions) as a plugin."""
        version = str(getattr(module, "__version__", "unknown"))
        location = str(getattr(module, "__file__", "") or getattr(module, "__name__", ""))
        self._add(module, _new_info(name, version, source, location))

    def _add(self, plugin: object, info: PluginInfo) -> None:
        """Register with pluggy, then collect each hook's specs from this plugin alone."""
        self.plugins.append(info)
        source_path = _source_path(plugin)
        if source_path is not None:  # "--plugins-dir plugins" must not load the built-ins twice
            self._seen_paths.add(source_path)
        # pluggy names must be unique; two folders may both hold a "my_plugin"
        pm_name = info.name if self._pm.get_plugin(info.name) is None else f"{info.name}#{next(self._ids)}"
        try:
            self._pm.register(plugin, name=pm_name)
        except Exception as exc:
            hook = re.search(r"for hook '(\w+)'", str(exc))  # pluggy names the offending hook
            function = getattr(plugin, hook.group(1), None) if hook else None
            self._record(info, exc, _hook_location(function) if function else None)
            return
        # pluggy only reports misspelt hooks (lmstudio_modles) in check_pending(), for all plugins
        # at once; check this plugin's now so the author sees which function is wrong.
        for caller in self._pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
            if impl.optionalhook:
                continue
            self._pm.unregister(plugin)
            known = ", ".join(hook for hook, _, _, _ in _HOOKS)
            error = pluggy.PluginValidationError(
                plugin, f"unknown hook {caller.name!r} (known hooks: {known})"
            )
            self._record(info, error, _hook_location(impl.function))
            return
        for hook_name, kind, label, spec_type in _HOOKS:
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                called, result = _run_bounded(impl.function, self._limit_for(info), f"running {hook_name}()",
                                              info.name)
                if not called:
                    self._record(info, result)
                    continue
                where = _hook_location(impl.function)
                for spec in self._valid_specs(info, where, hook_name, result, spec_type):
                    self._store(info, kind, label, spec, where)

    def _valid_specs(
        self, info: PluginInfo, where: str, hook_name: str, result: Any, spec_type: type
    ) -> list[Any]:
        """The well-formed specs in a hook's return value; each problem is recorded."""
        if not isinstance(result, (list, tuple)):
            problem = (
                f"{hook_name}() returned {type(result).__name__}, expected a list of {spec_type.__name__}"
            )
            self._record(info, TypeError(problem), where)
            return []
        valid = []
        for item in result:
            problem = _spec_problem(hook_name, item, spec_type)
            if problem is None:
                valid.append(item)
            else:
                self._record(info, TypeError(problem), where)
        return valid

    def _store(self, info: PluginInfo, kind: str, label: str, spec: Any, where: str) -> None:
        earlier = self._owners[kind].get(spec.name)
        if earlier is not None:
            problem = f"{label} {spec.name!r} is already provided by {_describe_owner(earlier)}"
            self._record(info, ValueError(problem), where)
            return
        self._specs[kind][spec.name] = spec
        self._owners[kind][spec.name] = info
        info.provides.setdefault(kind, []).append(spec.name)
        if kind != "corpus_readers":
            return
        for raw in spec.extensions:
            ext = raw.lower() if raw.startswith(".") else "." + raw.lower()
            taken = self._extensions.get(ext)
            if taken is not None:
                owner = _describe_owner(self._owners[kind][taken.name])
                self._record(
                    info, ValueError(f"extension {ext!r} is already read by {taken.name!r} ({owner})"), where
                )
            else:
                self._extensions[ext] = spec

    def _record(self, info: PluginInfo, exc: BaseException, where: str | None = None) -> None:
        """Remember a plugin failure; in strict mode raise it instead of carrying on."""
        message = str(exc) if isinstance(exc, PluginTimeout) else _one_line(exc)
        if isinstance(exc, PluginTimeout):
            trace = f"Traceback (where it was still running):\n{exc.stack}{message}\n"
        elif exc.__traceback__ is None:  # found by the registry, not raised: point at the hook
            trace = f"Traceback (hook implementation):\n{where or ''}{message}\n"
        else:
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if where:
                trace += f"Hook implementation:\n{where}"
        error = PluginError(info.name, info.source, message, trace)
        info.errors.append(error)
        self.errors.append(error)
        if self._strict:
            raise exc

    # ---- lookups ---------------------------------------------------------------------------

    def tokenizers(self) -> dict[str, TokenizerSpec]:
        return dict(self._specs["tokenizers"])

    def models(self) -> dict[str, ModelSpec]:
        return dict(self._specs["models"])

    def corpus_readers(self) -> dict[str, CorpusReaderSpec]:
        return dict(self._specs["corpus_readers"])

    def truths(self) -> dict[str, TruthSpec]:
        return dict(self._specs["truths"])

    def tokenizer(self, name: str) -> TokenizerSpec:
        """The tokenizer spec called ``name``; ConfigError naming the available ones otherwise."""
        return self._lookup("tokenizers", name)

    def model(self, name: str) -> ModelSpec:
        """The model spec called ``name``; ConfigError naming the available ones otherwise."""
        return self._lookup("models", name)

    def _lookup(self, kind: str, name: str) -> Any:
        specs = self._specs[kind]
        if name in specs:
            return specs[name]
        label = _LABELS[kind]
        available = ", ".join(sorted(specs)) or "none"
        where = "" if kind == "truths" else f"{label.replace(' ', '_')}.plugin: "  # no config key
        raise ConfigError(f"{where}unknown {label} {name!r} (available: {available})")

    def reader_for(self, path: str | Path) -> CorpusReaderSpec | None:
        """The reader for a file, by its (lower-case) extension; the longest match wins (.tar.gz)."""
        filename = Path(path).name.lower()
        for ext in sorted(self._extensions, key=len, reverse=True):
            if filename.endswith(ext):
                return self._extensions[ext]
        return None

    def readers_by_extension(self) -> dict[str, Callable[[Path], str]]:
        """Each extension's read function; ``sys.exit()`` or a KeyboardInterrupt from one raises
        :class:`PluginCallError` naming the plugin (its other exceptions are left to the caller,
        which names the file)."""
        return {ext: self._guarded_reader(spec) for ext, spec in self._extensions.items()}

    def _guarded_reader(self, spec: CorpusReaderSpec) -> Callable[[Path], str]:
        owner = self.owner("corpus_readers", spec.name)

        @functools.wraps(spec.read)
        def read(path: Path) -> str:
            with plugin_exits(owner, f"reading {path} with corpus reader {spec.name!r}"):
                return spec.read(path)

        return read

    def truth_for(self, text: str) -> TruthSpec | None:
        """The truth whose ``recognises`` says it generated the corpus ``text``, or None.

        The truths are asked in the order they were loaded (the built-ins first) and the first
        to answer True wins. An exception from a plugin's ``recognises``, or an answer that is
        not a bool, raises :class:`PluginCallError` naming the plugin.
        """
        for name, spec in self._specs["truths"].items():
            with plugin_call(self.owner("truths", name), f"asking truth {name!r} whether it made the corpus"):
                answer = spec.recognises(text)
                if not isinstance(answer, bool):
                    raise TypeError(f"recognises() returned {type(answer).__name__}, not a bool")
            if answer:
                return spec
        return None

    def owner(self, kind: str, name: str) -> str:
        """The plugin that provides ``name`` (for error messages).

        ``kind`` is ``"tokenizers"``, ``"models"``, ``"corpus_readers"`` or ``"truths"``, as in
        :meth:`tokenizers`, :meth:`models`, :meth:`corpus_readers` and :meth:`truths`; the singular
        spellings are accepted too.
        """
        key = _KIND_ALIASES.get(kind, kind)
        if key not in self._owners:
            raise ValueError(f"unknown kind {kind!r} (use tokenizers, models or corpus_readers, or truths)")
        info = self._owners[key].get(name)
        if info is None:
            self._lookup(key, name)  # raises the ConfigError listing what is available
        return info.name  # type: ignore[union-attr]

    # ---- calling plugins -------------------------------------------------------------------

    def build_tokenizer(
        self,
        name: str,
        params: Any,
        texts: Callable[[], Iterable[str]],
        progress: Callable[[int, int], None] | None,
    ) -> Tokenizer:
        """Tokenizer ``name`` built (usually trained on ``texts()``) with validated ``params``.

        Anything but a :class:`~lmstudio_app.tokenizer.Tokenizer` back, or an exception from the
        plugin, raises :class:`PluginCallError` naming the plugin; an :class:`LMStudioError` from
        ``progress`` (e.g. :class:`~lmstudio_app.errors.Cancelled`) passes through.
        """
        spec = self.tokenizer(name)
        with plugin_call(self.owner("tokenizers", name), f"building tokenizer {name!r}"):
            tokenizer = spec.build(params, texts, progress)
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError(f"build() returned {type(tokenizer).__name__}, not a lmstudio_app Tokenizer")
        return tokenizer

    def build_model(self, name: str, params: Any, vocab_size: int) -> LanguageModel:
        """Model ``name`` for ``vocab_size`` token IDs, on the default device (see
        :func:`build_model_from_spec`); failures raise :class:`PluginCallError` naming the plugin."""
        return build_model_from_spec(self.model(name), self.owner("models", name), params, vocab_size)
