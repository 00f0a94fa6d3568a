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
Strict mode (``LMSTUDIO_STRICT_PLUGINS=1``) re-raises the first failure instead, for authors.

Calling a plugin's code later (building a tokenizer or a model, a forward pass) goes through
:func:`plugin_call`, so an exception from it names the plugin instead of escaping as a traceback;
:meth:`PluginRegistry.build_tokenizer` and :meth:`PluginRegistry.build_model` also check what the
factory returned, and :meth:`PluginRegistry.truth_for` what each ``recognises`` answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re
import sys
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import ConfigError, LMStudioError, PluginCallError
from .settings import user_plugin_dir
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


@contextmanager
def plugin_call(owner: str, what: str) -> Iterator[None]:
    """Run plugin code: an exception from it becomes a :class:`PluginCallError` naming ``owner``.

    ``what`` says what the plugin was doing ("building model 'gpt'"). An :class:`LMStudioError`
    passes through unchanged (the plugin, or the core it called, already explains itself), and so
    do exceptions that are not an ``Exception`` (KeyboardInterrupt, SystemExit, GeneratorExit).
    """
    try:
        yield
    except LMStudioError:
        raise
    except Exception as exc:
        raise PluginCallError(owner, what, exc) from exc


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

    @classmethod
    def discover(
        cls,
        plugins_dirs: Sequence[str | Path] = (),
        *,
        use_entry_points: bool = True,
        use_user_dir: bool = True,
        disabled: Collection[str] = (),
        strict: bool | None = None,
    ) -> PluginRegistry:
        """Find and load plugins; ``strict=None`` reads ``LMSTUDIO_STRICT_PLUGINS``."""
        registry = cls(strict=_strict_from_env() if strict is None else strict)
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
        try:
            plugin = load()
        except (Exception, SystemExit) as exc:
            self.plugins.append(info)
            self._record(info, exc)
            return
        self._add(plugin, info)

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
                try:
                    result = impl.function()
                except (Exception, SystemExit) as exc:
                    self._record(info, exc)
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
        message = _one_line(exc)
        if exc.__traceback__ is None:  # found by the registry, not raised: point at the hook
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
        return {ext: spec.read for ext, spec in self._extensions.items()}

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
