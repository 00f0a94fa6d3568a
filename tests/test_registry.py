"""Plugin discovery: built-ins through the entry point, broken plugins isolated, env switches."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from lmstudio_app import ModelSpec, TokenizerSpec, hookimpl
from lmstudio_app.errors import Cancelled, ConfigError, PluginCallError
from lmstudio_app.registry import PluginRegistry, build_model_from_spec, plugin_call, safe_mode_active

FAKES = Path(__file__).parent / "plugins"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user folder and no plugin switches, whatever the developer's shell has."""
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    monkeypatch.delenv("LMSTUDIO_STRICT_PLUGINS", raising=False)
    return tmp_path / "home"


def plugin_dir(tmp_path: Path, *names: str, folder: str = "plugins") -> Path:
    """A folder holding copies of the named fake plugins."""
    target = tmp_path / folder
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FAKES / f"{name}.py", target / f"{name}.py")
    return target


def folder_only(*dirs: Path, **kwargs) -> PluginRegistry:
    return PluginRegistry.discover(list(dirs), use_entry_points=False, use_user_dir=False, **kwargs)


def info(registry: PluginRegistry, name: str):
    (found,) = [p for p in registry.plugins if p.name == name]
    return found


def test_builtins_come_from_the_entry_point() -> None:
    registry = PluginRegistry.discover(use_user_dir=False)
    builtin = info(registry, "builtins")
    assert (builtin.source, builtin.version, builtin.enabled) == ("built-in", "0.1.0", True)
    assert builtin.errors == [] and registry.errors == []
    assert builtin.provides["tokenizers"] == ["char", "byte", "bpe", "word", "file"]
    assert builtin.provides["models"] == ["gpt", "bigram"]
    assert list(registry.tokenizers()) == builtin.provides["tokenizers"]
    assert list(registry.models()) == builtin.provides["models"]
    assert registry.reader_for("notes/README.MD") is registry.reader_for("a.txt") is not None
    assert registry.owner("models", "gpt") == "builtins"
    assert registry.owner("tokenizers", "char") == "builtins"


def test_good_plugin_loads_and_its_specs_work(tmp_path: Path) -> None:
    registry = folder_only(plugin_dir(tmp_path, "good_plugin"))
    assert registry.errors == []
    good = info(registry, "good_plugin")
    assert (good.source, good.version, good.location) == (
        "folder",
        "1.2.3",
        str(tmp_path / "plugins" / "good_plugin.py"),
    )
    assert good.provides == {"tokenizers": ["test-char"], "models": ["test-tiny"], "corpus_readers": []}

    tok_spec = registry.tokenizer("test-char")
    tok = tok_spec.build(tok_spec.params(), lambda: iter(["hello ", "world"]), None)
    assert tok.decode(tok.encode("low hold")) == "low hold"
    model_spec = registry.model("test-tiny")
    model = model_spec.build(model_spec.params(width=4, context_length=8), tok.vocab_size)
    logits = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, tok.vocab_size)


BROKEN = [
    ("import_error_plugin", ["ModuleNotFoundError: No module named 'lmstudio_missing_dependency'"]),
    (
        "bad_signature_plugin",
        ["PluginValidationError: Plugin 'bad_signature_plugin' for hook 'lmstudio_models'"],
    ),
    ("misspelt_hook_plugin", ["PluginValidationError: unknown hook 'lmstudio_modles'"]),
    ("raising_plugin", ["RuntimeError: raising_plugin is broken on purpose"]),
    (
        "bad_return_plugin",
        [
            "TypeError: lmstudio_tokenizers() returned 'not-a-spec' in its list, expected TokenizerSpec",
            "TypeError: lmstudio_models() returned dict, expected a list of ModelSpec",
        ],
    ),
]


@pytest.mark.parametrize(("broken", "messages"), BROKEN, ids=[b for b, _ in BROKEN])
def test_broken_plugin_is_recorded_and_the_rest_still_works(
    tmp_path: Path, broken: str, messages: list[str]
) -> None:
    registry = folder_only(plugin_dir(tmp_path, broken, "good_plugin"))
    assert [e.name for e in registry.errors] == [broken] * len(messages)
    for error, expected in zip(registry.errors, messages):
        assert error.message.startswith(expected), error.message
        assert "\n" not in error.message
        assert error.source == "folder"
        assert f"{broken}.py" in error.traceback  # points the author at their file
    broken_info = info(registry, broken)
    assert broken_info.errors == registry.errors and broken_info.provides["models"] == []
    assert info(registry, "good_plugin").errors == []
    assert set(registry.models()) == {"test-tiny"}
    assert set(registry.tokenizers()) == {"test-char"}


def test_a_raising_hook_does_not_stop_the_plugins_other_hooks(tmp_path: Path) -> None:
    registry = folder_only(plugin_dir(tmp_path, "raising_plugin"))
    assert registry.owner("corpus_readers", "shouty") == "raising_plugin"
    assert registry.reader_for(tmp_path / "NOTES.SHOUT").name == "shouty"
    assert registry.reader_for(tmp_path / "notes.txt") is None
    loud = tmp_path / "loud.shout"
    loud.write_text("HELLO", encoding="utf-8")
    assert registry.readers_by_extension()[".shout"](loud) == "hello"


def test_strict_mode_reraises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModuleNotFoundError, match="lmstudio_missing_dependency"):
        folder_only(plugin_dir(tmp_path, "import_error_plugin", folder="a"), strict=True)
    monkeypatch.setenv("LMSTUDIO_STRICT_PLUGINS", "1")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        folder_only(plugin_dir(tmp_path, "raising_plugin", folder="b"))
    with pytest.raises(ConfigError, match="plugins folder not found"):
        folder_only(tmp_path / "missing")
    assert folder_only(plugin_dir(tmp_path, "raising_plugin", folder="c"), strict=False).errors


def test_safe_mode_loads_only_the_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    user_plugins = plugin_dir(clean_env, "raising_plugin")
    monkeypatch.setenv("LMSTUDIO_PLUGINS", "none")
    assert safe_mode_active()
    registry = PluginRegistry.discover([plugin_dir(tmp_path, "good_plugin")])
    assert info(registry, "builtins").enabled
    assert not info(registry, "good_plugin").enabled and not info(registry, "raising_plugin").enabled
    assert info(registry, "raising_plugin").location == str(user_plugins / "raising_plugin.py")
    assert "test-tiny" not in registry.models() and "shouty" not in registry.corpus_readers()
    assert not any(e.name in ("good_plugin", "raising_plugin") for e in registry.errors)
    monkeypatch.setenv("LMSTUDIO_PLUGINS", "good_plugin")
    assert not safe_mode_active()


def test_plugins_env_names_the_third_party_plugins_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMSTUDIO_PLUGINS", " good_plugin , other")
    registry = folder_only(plugin_dir(tmp_path, "good_plugin", "raising_plugin"))
    assert [(p.name, p.enabled) for p in registry.plugins] == [
        ("good_plugin", True),
        ("raising_plugin", False),
    ]
    assert registry.errors == []


def test_disabled_plugins_are_listed_but_not_loaded_and_builtins_stay(tmp_path: Path) -> None:
    registry = PluginRegistry.discover(
        [plugin_dir(tmp_path, "good_plugin", "raising_plugin")],
        use_user_dir=False,
        disabled=["raising_plugin", "builtins"],
    )
    assert info(registry, "builtins").enabled and "gpt" in registry.models()
    assert info(registry, "good_plugin").enabled and "test-tiny" in registry.models()
    raising = info(registry, "raising_plugin")
    assert not raising.enabled and raising.errors == [] and raising.version == "unknown"
    assert "shouty" not in registry.corpus_readers()


def test_duplicate_names_first_plugin_wins(tmp_path: Path) -> None:
    first = plugin_dir(tmp_path, "good_plugin", folder="first")
    second = plugin_dir(tmp_path, "duplicate_plugin", folder="second")
    registry = PluginRegistry.discover([first, second], use_user_dir=False)
    messages = [e.message for e in registry.errors if e.name == "duplicate_plugin"]
    assert messages == [
        "ValueError: model 'gpt' is already provided by built-in",
        "ValueError: model 'test-tiny' is already provided by plugin 'good_plugin'",
    ]
    assert registry.owner("models", "gpt") == "builtins"
    assert registry.owner("models", "test-tiny") == "good_plugin"
    assert registry.owner("models", "dup-unique") == "duplicate_plugin"
    assert info(registry, "duplicate_plugin").provides["models"] == ["dup-unique"]


def test_unknown_names_raise_config_error_listing_available(tmp_path: Path) -> None:
    registry = folder_only(plugin_dir(tmp_path, "good_plugin"))
    with pytest.raises(ConfigError) as excinfo:
        registry.model("nope")
    assert str(excinfo.value) == "model.plugin: unknown model 'nope' (available: test-tiny)"
    with pytest.raises(
        ConfigError, match=r"^tokenizer.plugin: unknown tokenizer 'x' \(available: test-char\)$"
    ):
        registry.tokenizer("x")
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        registry.owner("models", "nope")
    assert "available: none" in str(pytest.raises(ConfigError, folder_only().model, "gpt").value)


def test_user_plugin_dir_comes_from_lmstudio_home(clean_env: Path) -> None:
    plugin_dir(clean_env, "good_plugin")
    registry = PluginRegistry.discover(use_entry_points=False)
    assert info(registry, "good_plugin").location == str(clean_env / "plugins" / "good_plugin.py")
    assert "test-tiny" in registry.models()
    assert PluginRegistry.discover(use_entry_points=False, use_user_dir=False).plugins == []


def test_missing_folders(tmp_path: Path) -> None:
    assert PluginRegistry.discover(use_entry_points=False).errors == []  # no user folder yet: fine
    registry = folder_only(tmp_path / "nowhere", plugin_dir(tmp_path, "good_plugin"))
    assert [e.message for e in registry.errors] == [f"{tmp_path / 'nowhere'}: plugins folder not found"]
    assert "test-tiny" in registry.models()


MODEL_FILE = """
from dataclasses import dataclass
from lmstudio_app import ModelSpec, hookimpl, param

MARK = {mark!r}

@dataclass
class Params:
    size: int = param(1, min=1)

@hookimpl
def lmstudio_models():
    return [ModelSpec("from-" + MARK, "test", Params, lambda params, vocab_size: MARK)]
"""


def test_same_file_name_in_two_folders_does_not_collide(tmp_path: Path) -> None:
    for mark in ("a", "b"):
        (tmp_path / mark).mkdir()
        (tmp_path / mark / "myplug.py").write_text(MODEL_FILE.format(mark=mark), encoding="utf-8")
    registry = folder_only(tmp_path / "a", tmp_path / "b", tmp_path / "a")  # "a" twice: loaded once
    assert registry.errors == []
    assert [p.name for p in registry.plugins] == ["myplug", "myplug"]
    spec_a, spec_b = registry.model("from-a"), registry.model("from-b")
    assert (spec_a.build(spec_a.params(), 2), spec_b.build(spec_b.params(), 2)) == ("a", "b")
    assert spec_a.params.__module__ != spec_b.params.__module__
    assert spec_a.params.__module__ in sys.modules  # needed by dataclasses / get_type_hints


def test_package_plugin_with_relative_import(tmp_path: Path) -> None:
    package = tmp_path / "plugins" / "pkgplug"
    package.mkdir(parents=True)
    (package / "impl.py").write_text(MODEL_FILE.format(mark="pkg"), encoding="utf-8")
    (package / "__init__.py").write_text(
        "__version__ = '0.9'\nfrom .impl import lmstudio_models\n", encoding="utf-8"
    )
    (package.parent / "_private.py").write_text("raise SystemExit('must be skipped')\n", encoding="utf-8")
    registry = folder_only(package.parent)
    assert registry.errors == []
    assert [(p.name, p.version) for p in registry.plugins] == [("pkgplug", "0.9")]
    assert registry.model("from-pkg").build(None, 1) == "pkg"


def test_spec_with_non_dataclass_params_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    source = MODEL_FILE.format(mark="x").replace("@dataclass\n", "")
    (folder / "nodc.py").write_text(source, encoding="utf-8")
    registry = folder_only(folder)
    assert registry.models() == {}
    assert "params must be a dataclass" in registry.errors[0].message


READER_FILE = """
from lmstudio_app import CorpusReaderSpec, hookimpl

@hookimpl
def lmstudio_corpus_readers():
    return [
        CorpusReaderSpec("int-ext", "bad", 5, str),
        CorpusReaderSpec("str-ext", "bad", ".md", str),
        CorpusReaderSpec("good", "upper-case extension without a dot is normalised", ("LOG",), str),
    ]
"""


def test_reader_specs_are_checked_and_extensions_normalised(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "readers.py").write_text(READER_FILE, encoding="utf-8")
    registry = folder_only(folder)
    assert [e.message for e in registry.errors] == [
        "TypeError: 'int-ext': extensions must be a tuple of strings like ('.md',)",
        "TypeError: 'str-ext': extensions must be a tuple of strings like ('.md',)",
    ]
    assert list(registry.corpus_readers()) == ["good"]
    assert registry.reader_for("server.Log").name == "good"
    assert list(registry.readers_by_extension()) == [".log"]


def test_register_module(tmp_path: Path) -> None:
    module = types.ModuleType("embedded_plugin")
    module.__version__ = "2.0"

    @hookimpl
    def lmstudio_models() -> list[ModelSpec]:
        import dataclasses

        return [ModelSpec("embedded", "test", dataclasses.make_dataclass("P", []), lambda p, v: None)]

    module.lmstudio_models = lmstudio_models
    registry = folder_only()
    registry.register_module(module, "embedded", "test")
    assert registry.owner("models", "embedded") == "embedded"
    assert (registry.plugins[0].version, registry.plugins[0].source) == ("2.0", "test")
    registry.register_module(module, "embedded-again", "test")  # the same object twice
    assert [e.name for e in registry.errors] == ["embedded-again"]
    assert "already registered" in registry.errors[0].message


def test_repo_plugins_folder_does_not_load_the_builtins_twice() -> None:
    # README: "lmstudio --plugins-dir plugins plugins" scans the folder holding lmstudio_builtins/
    registry = PluginRegistry.discover([FAKES.parent.parent / "plugins"], use_user_dir=False)
    assert registry.errors == []
    assert [p.name for p in registry.plugins] == ["builtins", "lstm_example"]
    assert registry.owner("models", "lstm") == "lstm_example"


def test_owner_takes_the_plural_kind_and_the_singular_too(tmp_path: Path) -> None:
    registry = folder_only(plugin_dir(tmp_path, "good_plugin"))
    assert registry.owner("models", "test-tiny") == registry.owner("model", "test-tiny") == "good_plugin"
    assert registry.owner("tokenizers", "test-char") == registry.owner("tokenizer", "test-char") == "good_plugin"
    with pytest.raises(ValueError, match="use tokenizers, models or corpus_readers"):
        registry.owner("widgets", "test-tiny")


# ---- calling plugin code -------------------------------------------------------------------


def test_plugin_call_names_the_plugin_and_lets_the_apps_own_errors_through() -> None:
    with pytest.raises(PluginCallError) as info:
        with plugin_call("my_plugin", "building model 'x'"):
            raise KeyError("n_head")
    assert info.value.plugin == "my_plugin" and isinstance(info.value.original, KeyError)
    assert str(info.value) == "plugin 'my_plugin' failed in building model 'x': KeyError: 'n_head'"
    assert info.value.__cause__ is info.value.original
    with pytest.raises(Cancelled):  # an LMStudioError already explains itself
        with plugin_call("my_plugin", "building a tokenizer"):
            raise Cancelled("building the tokenizer was cancelled")
    with pytest.raises(KeyboardInterrupt):  # under Python's own SIGINT handler it may be the person's Ctrl-C
        with plugin_call("my_plugin", "training"):
            raise KeyboardInterrupt
    with plugin_call("my_plugin", "nothing"):
        pass  # no exception, nothing happens


def _factories_plugin(tokenizer_build, model_build) -> types.ModuleType:
    """A plugin named "factories" with one tokenizer ("tok") and one model ("net")."""
    import dataclasses

    params = dataclasses.make_dataclass("P", [])
    module = types.ModuleType("factories")
    module.lmstudio_tokenizers = hookimpl(lambda: [TokenizerSpec("tok", "test", params, tokenizer_build)])
    module.lmstudio_models = hookimpl(lambda: [ModelSpec("net", "test", params, model_build)])
    return module


def _registry_with(tokenizer_build, model_build) -> PluginRegistry:
    registry = folder_only()
    registry.register_module(_factories_plugin(tokenizer_build, model_build), "factories", "test")
    assert registry.errors == []
    return registry


def test_build_tokenizer_and_build_model_return_what_the_plugin_built(tmp_path: Path) -> None:
    good = folder_only(plugin_dir(tmp_path, "good_plugin"))
    tok_params = good.tokenizer("test-char").params()
    tokenizer = good.build_tokenizer("test-char", tok_params, lambda: iter(["abc"]), None)
    assert tokenizer.decode(tokenizer.encode("cab")) == "cab"
    model = good.build_model("test-tiny", good.model("test-tiny").params(context_length=8), tokenizer.vocab_size)
    assert model.context_length == 8 and model.vocab_size == tokenizer.vocab_size
    with torch.device("meta"):  # the model preview builds on the meta device
        meta = build_model_from_spec(good.model("test-tiny"), "good_plugin", good.model("test-tiny").params(), 5)
    assert next(meta.parameters()).device.type == "meta"


def test_build_tokenizer_names_the_plugin_when_its_factory_raises_or_returns_the_wrong_type() -> None:
    def raises(params, texts, progress):
        raise KeyError("missing merges")

    registry = _registry_with(raises, lambda p, v: None)
    with pytest.raises(PluginCallError) as info:
        registry.build_tokenizer("tok", None, lambda: iter(["abc"]), None)
    assert info.value.plugin == "factories"
    assert str(info.value) == "plugin 'factories' failed in building tokenizer 'tok': KeyError: 'missing merges'"

    registry = _registry_with(lambda params, texts, progress: "not a tokenizer", lambda p, v: None)
    with pytest.raises(PluginCallError) as info:
        registry.build_tokenizer("tok", None, lambda: iter(["abc"]), None)
    assert str(info.value) == (
        "plugin 'factories' failed in building tokenizer 'tok': "
        "TypeError: build() returned str, not a lmstudio_app Tokenizer"
    )

    def cancels(params, texts, progress):
        progress(0, 1)

    def cancelled(done: int, total: int) -> None:
        raise Cancelled("building the tokenizer was cancelled")

    registry = _registry_with(cancels, lambda p, v: None)
    with pytest.raises(Cancelled):  # the caller's own error is not the plugin's
        registry.build_tokenizer("tok", None, lambda: iter(["abc"]), cancelled)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p, v: {}["n_head"], "KeyError: 'n_head'"),
        (lambda p, v: None, "TypeError: build() returned NoneType, not a LanguageModel with a context_length"),
        (lambda p, v: torch.nn.Linear(2, 2),
         "TypeError: build() returned Linear, not a LanguageModel with a context_length"),
    ],
    ids=["raises", "not-a-module", "no-context-length"],
)
def test_build_model_names_the_plugin_when_its_factory_raises_or_returns_the_wrong_type(build, message) -> None:
    registry = _registry_with(lambda params, texts, progress: None, build)
    with pytest.raises(PluginCallError) as info:
        registry.build_model("net", None, 10)
    assert info.value.plugin == "factories"
    assert str(info.value) == f"plugin 'factories' failed in building model 'net': {message}"


def test_building_an_unknown_plugin_lists_the_available_ones() -> None:
    registry = _registry_with(lambda params, texts, progress: None, lambda p, v: None)
    with pytest.raises(ConfigError, match=r"unknown model 'gpt' \(available: net\)"):
        registry.build_model("gpt", None, 10)
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'char' \(available: tok\)"):
        registry.build_tokenizer("char", None, lambda: iter([]), None)
