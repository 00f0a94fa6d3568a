"""docs/plugins.md stays true: every hook is documented and every example (the truth plugin too) runs."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lmstudio_app import hookspecs
from lmstudio_app.errors import ParamError
from lmstudio_app.params import build_params, param_infos
from lmstudio_app.registry import PluginRegistry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
EXAMPLE_MARK = "# unigram_plugin.py"
TRUTH_MARK = "# pets_truth.py"


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", guide_text(), flags=re.MULTILINE | re.DOTALL)


def block_containing(language: str, marker: str) -> str:
    (block,) = [b for b in code_blocks(language) if marker in b]
    return block


def import_snippet(path: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Write a snippet to ``path`` and import it as a real module (dataclasses need sys.modules)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"doc_snippet_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")]


def test_hookspecs_are_found() -> None:
    assert "lmstudio_models" in hook_names()  # guards the marker attribute the next test relies on


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_section_in_the_guide(hook: str) -> None:
    assert re.search(rf"^### `{hook}\(\)`$", guide_text(), flags=re.MULTILINE), f"document {hook} in {GUIDE}"


def test_python_blocks_compile() -> None:
    blocks = code_blocks("python")
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, str(GUIDE), "exec")


def test_toml_blocks_parse() -> None:
    blocks = code_blocks("toml")
    assert blocks
    for block in blocks:
        tomllib.loads(block)


@pytest.fixture
def example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "unigram_plugin.py").write_text(block_containing("python", EXAMPLE_MARK), encoding="utf-8")
    return folder


def test_complete_example_registers_builds_and_predicts(example_dir: Path) -> None:
    registry = PluginRegistry.discover([example_dir], use_entry_points=False, use_user_dir=False, strict=True)
    (info,) = registry.plugins
    assert (info.name, info.version, info.provides["models"]) == ("unigram_plugin", "1.0.0", ["unigram"])
    spec = registry.model("unigram")

    # the [model] table shown in the guide is a valid config for the example
    table = tomllib.loads(block_containing("toml", 'plugin = "unigram"'))["model"]
    assert table.pop("plugin") == "unigram"
    params = build_params(spec.params, table, "model")
    with pytest.raises(ParamError, match="model.context_length"):
        build_params(spec.params, {"context_length": 0}, "model")

    model = spec.build(params, 11)
    idx = torch.randint(0, 11, (3, 7))
    logits = model(idx)
    assert logits.shape == (3, 7, 11)
    assert model.param_roles() == {"token_logits": "vector"}
    assert model.describe()["context_length"] == table["context_length"]

    # it learns: a few steps on a constant target make that token the most likely one
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(idx).view(-1, 11), torch.full((21,), 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(idx)[0, -1].argmax().item() == 4


def test_testing_example_passes_against_the_complete_example(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the guide's test finds the plugin in ../my_plugins relative to itself
    test_file = example_dir.parent / "tests" / "test_my_plugin.py"
    module = import_snippet(test_file, block_containing("python", "def test_"), monkeypatch)
    tests = [fn for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)]
    assert tests
    for test in tests:
        test()


def test_params_example_builds_the_documented_widgets_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = import_snippet(
        tmp_path / "params_example.py", block_containing("python", "class MyParams"), monkeypatch
    )
    params_cls = module.MyParams
    infos = {i.name: i for i in param_infos(params_cls)}
    assert infos["activation"].choices == ("gelu", "relu")
    assert infos["init_std"].log_scale and infos["stop_words"].type is list
    assert build_params(params_cls, {"stop_words": "a, b"}).stop_words == ["a", "b"]
    with pytest.raises(ParamError, match="divisible"):
        build_params(params_cls, {"n_embd": 130, "n_head": 4}, "model")


def test_tokenizer_example_round_trips_lower_case_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = block_containing("python", "def build_lowercase_chars")
    module = import_snippet(tmp_path / "tokenizer_example.py", source, monkeypatch)
    tokenizer = module.build_lowercase_chars(None, lambda: iter(["Hello ", "World\n"]), None)
    assert tokenizer.vocab_size == len(set("hello world\n")) + 1
    assert tokenizer.decode(tokenizer.encode("Hello\nworld")) == "hello\nworld"
    assert tokenizer.encode("?") == [tokenizer.unk_id]


def test_truth_example_registers_recognises_its_corpus_and_gives_the_documented_odds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmstudio_app.inference.truth import TokenTruth
    from lmstudio_builtins.tokenizing import TOKENIZER_SPECS

    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "pets_truth.py").write_text(block_containing("python", TRUTH_MARK), encoding="utf-8")
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False, strict=True)
    (info,) = registry.plugins
    assert info.provides["truths"] == ["pets"]
    spec = registry.truths()["pets"]
    assert sum(p for p, _ in spec.documents()) == pytest.approx(1.0)

    module = import_snippet(tmp_path / "pets_copy.py", block_containing("python", TRUTH_MARK), monkeypatch)
    corpus = module.generate(500, seed=1)
    assert registry.truth_for(corpus) is spec
    assert registry.truth_for(corpus[:-3]) is spec  # a cut-off last line is ignored
    assert registry.truth_for("big cat .\n" + corpus) is None  # not a sentence of the language
    assert registry.truth_for("") is None

    # what the guide says about "big": dog 0.5, horse 0.5 for words; a space for characters
    word, char = ({s.name: s for s in TOKENIZER_SPECS}[name] for name in ("word", "char"))
    words = word.build(build_params(word.params, {}), lambda: iter([corpus]), None)
    chars = char.build(build_params(char.params, {}), lambda: iter([corpus]), None)
    truth = TokenTruth(spec, words)
    assert {words.token_string(i): p for i, p in truth.next_token("big").items()} == {" dog": 0.5, " horse": 0.5}
    assert {chars.token_string(i): p for i, p in TokenTruth(spec, chars).next_token("big").items()} == {" ": 1.0}
    for prompt in spec.prompts:
        assert truth.next_token(prompt) is not None
    # the lowest loss per token: the entropy of a sentence over its mean length in tokens (4 words)
    entropy = -sum(p * math.log(p) for p, _ in spec.documents())
    assert truth.entropy_rate() == pytest.approx(entropy / 4, rel=1e-12)


def test_inspection_example_exposes_what_the_guide_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Looking inside your model" plugin: discovered, and every inspection view works on it."""
    import numpy as np

    from lmstudio_app.inference.inspection import Inspector
    from lmstudio_app.inference.predictor import Predictor
    from tests.test_inference import make_char_tokenizer

    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "attention_only.py").write_text(block_containing("python", "# attention_only.py"), encoding="utf-8")
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False, strict=True)
    spec = registry.model("attention-only")
    tokenizer = make_char_tokenizer(["<unk>", "\n", "a", "b", "c", " "])
    torch.manual_seed(0)
    model = spec.build(build_params(spec.params, {"n_embd": 16, "context_length": 8}), tokenizer.vocab_size)
    idx = torch.randint(0, tokenizer.vocab_size, (1, 6))
    with torch.no_grad():
        out = model.internals(idx)
        torch.testing.assert_close(out.logits, model(idx)[0])
        torch.testing.assert_close(model.decode_hidden(out.residual[-1]), out.logits)
    inspector = Inspector(Predictor(model, tokenizer))
    maps = inspector.attention("abc ab")
    assert maps.weights.shape == (1, 1, 6, 6) and np.all(np.triu(maps.weights, 1) == 0)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    lens = inspector.logit_lens("abc ab")
    assert lens.layer_names == ["embedding", "attention"]
    assert lens.top_ids[-1, -1] == inspector.predictor.next_token("abc ab").candidates[0].id
    assert inspector.embeddings().xy.shape == (tokenizer.vocab_size, 2)
