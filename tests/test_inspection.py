"""Looking inside a model (inference/inspection.py and the models' inspection contract).

The numbers are checked against what they must equal: the model's own forward pass, the
predictor's next-token distribution, a numpy SVD, a hand computation of bits per byte.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lmstudio_app.inference.inspection import (
    EmbeddingProjector,
    Inspector,
    NotExposedError,
    bits_per_byte,
    byte_counts,
)
from lmstudio_app.inference.predictor import EmptyPromptError, Predictor
from lmstudio_app.model_api import LanguageModel
from lmstudio_builtins.bigram import BigramModel, BigramParams
from lmstudio_builtins.gpt import GPT, CausalSelfAttention, GPTParams
from tests.test_inference import TableBigram, make_char_tokenizer

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
VOCAB = ["<unk>", "\n", " ", "a", "b", "c", "é", "€", "😀"]  # 1, 2, 3 and 4 UTF-8 bytes
TEXT = "abc é€ 😀a\nba😀 cé"  # 16 characters

VARIANTS = {
    "learned": {},
    "rotary": {"positional": "rotary"},
    "qk_norm rmsnorm": {"qk_norm": True, "norm": "rmsnorm"},
    "rotary qk_norm layernorm bias": {"positional": "rotary", "qk_norm": True, "bias": True},
    "swiglu untied softcap": {"mlp": "swiglu", "tie_weights": False, "logit_softcap": 3.0},
}


def small_gpt(seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTParams(n_layer=2, n_head=2, n_embd=16, context_length=8, **options), len(VOCAB))
    with torch.no_grad():  # larger weights than the init, so attention is far from uniform
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(20.0)
    return model


def lstm_model(n_layer: int = 2):
    sys.path.insert(0, str(PLUGINS))
    try:
        from lstm_example import LSTMLanguageModel, LSTMParams
    finally:
        sys.path.remove(str(PLUGINS))
    torch.manual_seed(0)
    return LSTMLanguageModel(LSTMParams(n_layer=n_layer, n_embd=16, context_length=8), len(VOCAB))


def inspector(model: LanguageModel, lock: threading.RLock | None = None) -> Inspector:
    return Inspector(Predictor(model, make_char_tokenizer(VOCAB), lock=lock))


# --- the models' contract ----------------------------------------------------------------------

@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_gpt_internals_reproduce_forward_and_residual_decodes_to_the_logits(options):
    model = small_gpt(**options).eval()
    idx = torch.randint(0, len(VOCAB), (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx)[0]
        out = model.internals(idx)
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        assert len(out.residual) == 3 and out.residual_names == ["embedding", "block 1", "block 2"]
        torch.testing.assert_close(model.decode_hidden(out.residual[-1]), logits, rtol=1e-5, atol=1e-5)
        # each block's attention is the attention forward used: replaying a block with the
        # returned probabilities instead of the fused kernel gives the next residual state
        block = model.transformer.h[0]
        _, _, v = block.attn._qkv(block.ln_1(out.residual[0][None]))
        y = (out.attention[0][None] @ v).transpose(1, 2).reshape(1, 8, 16)
        x = out.residual[0][None] + block.attn.c_proj(y)
        torch.testing.assert_close((x + block.mlp(block.ln_2(x)))[0], out.residual[1], rtol=1e-4, atol=1e-4)
        assert model.token_embeddings() is model.transformer.wte.weight
        lean = model.internals(idx, attention=False, residual=False)
        assert lean.attention is None and lean.residual is None
        torch.testing.assert_close(lean.logits, logits, rtol=1e-5, atol=1e-5)


def test_lstm_example_exposes_hidden_states_per_layer_and_embeddings_but_no_attention():
    model = lstm_model(n_layer=3).eval()
    idx = torch.randint(0, len(VOCAB), (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(idx)[0]
        out = model.internals(idx)
        assert out.attention is None
        assert out.residual_names == ["embedding", "lstm 1", "lstm 2", "lstm 3"]
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode_hidden(out.residual[-1]), logits, rtol=1e-5, atol=1e-5)
        # the middle layers are real: layer 1 of the model alone gives the second state
        first = nn.LSTM(16, 16, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(first, f"{name}_l0").copy_(getattr(model.lstm, f"{name}_l0"))
        torch.testing.assert_close(first(out.residual[0][None])[0][0], out.residual[1], rtol=1e-5, atol=1e-5)
    ins = inspector(model)
    with pytest.raises(NotExposedError, match="^this model does not expose attention$"):
        ins.attention("abc")
    lens = ins.logit_lens("abc")
    assert lens.layer_names == ["embedding", "lstm 1", "lstm 2", "lstm 3"] and lens.top_ids.shape == (4, 3)
    assert ins.embeddings().xy.shape == (len(VOCAB), 2)


class Opaque(LanguageModel):
    """A model that implements none of the inspection contract."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size, self.context_length = len(VOCAB), 8
        self.table = nn.Embedding(len(VOCAB), len(VOCAB))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def test_a_model_without_the_contract_says_what_it_does_not_expose_in_each_view():
    ins = inspector(Opaque())
    for call, what in ((lambda: ins.attention("ab"), "attention"), (lambda: ins.logit_lens("ab"), "hidden states"),
                       (ins.embeddings, "token embeddings")):
        with pytest.raises(NotExposedError) as info:
            call()
        assert str(info.value) == f"this model does not expose {what}" and info.value.what == what
    assert len(ins.text_loss("abc").losses) == 2  # the loss needs only forward
    assert ins.predictor.next_token("ab").candidates  # and it still predicts


def test_bigram_exposes_its_table_as_embeddings_only():
    model = BigramModel(BigramParams(context_length=8), len(VOCAB))
    ins = inspector(model)
    with pytest.raises(NotExposedError, match="attention"):
        ins.attention("ab")
    with pytest.raises(NotExposedError, match="hidden states"):
        ins.logit_lens("ab")
    assert ins.embeddings().labels == VOCAB


# --- attention and the logit lens ---------------------------------------------------------------

@pytest.mark.parametrize("options", [VARIANTS["learned"], VARIANTS["rotary qk_norm layernorm bias"]])
def test_attention_rows_are_distributions_and_causal(options):
    ins = inspector(small_gpt(**options))
    maps = ins.attention("abcab é")
    assert maps.weights.shape == (2, 2, 7, 7) and maps.weights.dtype == np.float32
    assert maps.tokens == list("abcab é") and maps.layer_names == ["block 1", "block 2"]
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps.weights, k=1) == 0.0)
    assert maps.weights.min() >= 0.0
    assert not np.allclose(maps.weights[..., 3, :4], 0.25, atol=0.05)  # not uniform: real scores
    layer, head, weight = maps.strongest(6, 0)
    assert weight == maps.weights[:, :, 6, 0].max() and maps.weights[layer, head, 6, 0] == weight


def test_long_prompts_are_cropped_to_the_last_context():
    ins = inspector(small_gpt())
    maps = ins.attention("abcabcabcab")  # 11 tokens, context 8
    assert maps.tokens == list("cabcabcab"[1:]) and maps.context_start == 3
    lens = ins.logit_lens("abcabcabcab")
    assert lens.top_ids.shape == (3, 8) and lens.context_start == 3
    with pytest.raises(EmptyPromptError):
        ins.attention("")


@pytest.mark.parametrize("options", [VARIANTS["learned"], VARIANTS["swiglu untied softcap"]])
def test_the_logit_lens_last_layer_is_the_models_prediction(options):
    ins = inspector(small_gpt(**options))
    text = "ab cé€a"
    lens = ins.logit_lens(text)
    assert lens.layer_names == ["embedding", "block 1", "block 2"]
    assert lens.top_ids.shape == lens.top_probs.shape == (3, 7) and lens.actual_probs.shape == (3, 6)
    surprise = ins.predictor.surprise(text)
    for position in range(7):
        pred = ins.predictor.next_token(text, position=position)
        best = pred.candidates[0]
        assert lens.top_ids[-1, position] == best.id and lens.top_tokens[-1][position] == best.text
        assert lens.top_probs[-1, position] == pytest.approx(best.prob, rel=1e-5)
        if position < 6:
            assert lens.actual_probs[-1, position] == pytest.approx(surprise[position + 1].prob, rel=1e-5)
    # the earlier layers are decoded too, and differ from the last
    assert not np.allclose(lens.top_probs[0], lens.top_probs[-1])


# --- the embedding map ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 6), (7, 12)], ids=["more tokens than width", "fewer tokens than width"])
def test_pca_matches_numpy_svd_of_the_centred_embeddings_up_to_sign(shape):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=shape) * np.linspace(5.0, 0.1, shape[1]) + 7.0
    m = EmbeddingProjector().project(emb, [str(i) for i in range(shape[0])])
    centred = emb - emb.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :2] * s[:2]
    for axis in range(2):
        sign = np.sign(expected[:, axis] @ m.xy[:, axis])
        np.testing.assert_allclose(m.xy[:, axis], sign * expected[:, axis], rtol=1e-4, atol=1e-4)
    assert m.explained == pytest.approx(tuple(s[:2] ** 2 / (s**2).sum()), rel=1e-6)


def test_the_inspector_projects_the_models_own_embedding_matrix():
    model = small_gpt()
    emb = model.transformer.wte.weight.detach().numpy().astype(np.float64)
    counts = np.arange(len(VOCAB))
    m = inspector(model).embeddings(counts=counts)
    assert m.labels == VOCAB and list(m.token_ids) == list(range(len(VOCAB)))
    assert list(m.counts) == list(counts)
    u, s, _ = np.linalg.svd(emb - emb.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(m.xy), np.abs(u[:, :2] * s[:2]), rtol=1e-3, atol=1e-3)


def test_successive_projections_move_points_a_little_and_never_flip_an_axis():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(30, 8))
    basis, _ = np.linalg.qr(raw - raw.mean(0))  # orthonormal, centred columns: exact variances below
    emb = basis * np.array([4.0, 3.9, 1, 0.9, 0.8, 0.7, 0.6, 0.5]) + 2.0  # two near-equal top axes
    labels = [str(i) for i in range(30)]
    projector = EmbeddingProjector()
    first = projector.project(emb, labels).xy
    spread = np.abs(first).max()

    nudged = projector.project(emb + rng.normal(scale=1e-3, size=emb.shape), labels).xy
    assert np.abs(nudged - first).max() < 1e-2 * spread  # a tiny change moves the points a little

    # the same geometry, turned around in the full space: a plain PCA may flip or swap the axes
    # (it does here: the sign rule follows the loadings); the aligned map stays where it was
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    turned = emb @ q
    plain = EmbeddingProjector().project(turned, labels).xy
    assert np.abs(plain - first).max() > 0.5 * spread  # the test can fail: without alignment it would
    np.testing.assert_allclose(projector.project(turned, labels).xy, first, atol=1e-3 * spread)

    # the two near-equal variances change places: plain PCA swaps the axes, the map does not
    swapped = basis * np.array([3.9, 4.0, 1, 0.9, 0.8, 0.7, 0.6, 0.5]) + 2.0
    aligned = projector.project(swapped, labels).xy
    assert np.abs(aligned - first).max() < 0.1 * spread
    assert np.abs(EmbeddingProjector().project(swapped, labels).xy - first).max() > 0.5 * spread

    # a different vocabulary starts afresh
    assert projector.project(emb[:10], labels[:10]).xy.shape == (10, 2)


def test_neighbours_are_cosine_nearest_in_the_full_space():
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [-1, 0, 0], [0.5, 0.5, 0.7]], dtype=float)
    m = EmbeddingProjector().project(vectors, ["a", "b", "c", "d", "e"])
    found = m.neighbours(0, k=3)
    assert [label for label, _ in found] == ["b", "e", "c"]
    assert found[0][1] == pytest.approx(0.9 / math.hypot(0.9, 0.1))
    assert m.neighbours(0, k=10)[-1] == ("d", pytest.approx(-1.0))
    assert m.neighbours(99) == []


# --- loss over a text ------------------------------------------------------------------------------

def test_bits_per_byte_of_a_known_text_is_the_hand_computation():
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(len(VOCAB), len(VOCAB), generator=gen) * 2
    ins = Inspector(Predictor(TableBigram(table, context_length=6), make_char_tokenizer(VOCAB)))
    result = ins.text_loss(TEXT)  # 16 tokens, context 6: scored in windows
    probs = torch.softmax(table.double(), dim=-1)
    ids = [VOCAB.index(ch) for ch in TEXT]
    losses = [-math.log(probs[a, b].item()) for a, b in zip(ids, ids[1:])]
    nbytes = [len(ch.encode("utf-8")) for ch in TEXT[1:]]
    assert sum(nbytes) == len(TEXT[1:].encode("utf-8")) == 25
    assert [x.token for x in result.losses] == list(TEXT[1:]) and [x.n_bytes for x in result.losses] == nbytes
    assert [x.loss for x in result.losses] == pytest.approx(losses, rel=1e-9)
    assert result.mean_nats == pytest.approx(sum(losses) / 15, rel=1e-9)
    assert result.bits_per_byte == pytest.approx(sum(losses) / (math.log(2) * 25), rel=1e-9)
    assert result.n_bytes == 25 and result.tokens == list(TEXT)
    for x, (a, b) in zip(result.losses, zip(ids, ids[1:])):
        assert x.p == pytest.approx(probs[a, b].item(), rel=1e-9)
        assert x.rank == 1 + int((table[a] > table[a, b]).sum())
    assert bits_per_byte(math.log(2) * 8, 4) == 2.0 and math.isnan(bits_per_byte(1.0, 0))


def test_byte_counts_share_out_the_text_once():
    from lmstudio_app.tokenizer import Token

    # a word tokenizer drops the spaces: they count for the next token; two tokens over one
    # character (byte-level BPE) count its bytes once
    tokens = [Token(1, "ab", 0, 2), Token(2, "é", 3, 4), Token(3, "é", 3, 4), Token(4, "c", 4, 5)]
    assert byte_counts("ab é c", tokens) == [2, 3, 0, 1]


def test_single_token_text_has_no_loss():
    result = inspector(small_gpt()).text_loss("a")
    assert result.losses == [] and math.isnan(result.mean_nats) and result.n_bytes == 0


def test_token_counts_and_text_windows_of_a_split():
    from lmstudio_app.errors import ParamError
    from lmstudio_app.inference.inspection import text_window, token_counts

    tokenizer = make_char_tokenizer(VOCAB)
    ids = np.array(tokenizer.encode(TEXT), dtype=np.uint16)
    assert list(token_counts(ids, len(VOCAB))) == [TEXT.count(ch) if i else 0 for i, ch in enumerate(VOCAB)]
    assert text_window(ids, tokenizer, 5, start=3) == (3, TEXT[3:8])
    assert text_window(ids, tokenizer, 5, start=100) == (11, TEXT[11:])  # clamped to fit
    assert text_window(ids, tokenizer, 500) == (0, TEXT)
    start, text = text_window(ids, tokenizer, 4, seed=7)
    assert text == TEXT[start : start + 4] and text_window(ids, tokenizer, 4, seed=7) == (start, text)
    with pytest.raises(ParamError, match="empty"):
        text_window(ids[:0], tokenizer)


# --- safety: the lock, eval mode, no gradients -------------------------------------------------------

def test_inspection_runs_under_the_lock_in_eval_mode_without_gradients_and_restores_the_mode():
    lock = threading.RLock()
    model = small_gpt()
    seen: list[tuple[bool, bool, bool]] = []
    original = model.internals

    def watched(idx, **kwargs):
        # another thread cannot take the lock while the model is inside internals()
        other = [True]
        t = threading.Thread(target=lambda: other.__setitem__(0, lock.acquire(blocking=False)))
        t.start()
        t.join()
        seen.append((other[0], model.training, torch.is_grad_enabled()))
        return original(idx, **kwargs)

    model.internals = watched  # type: ignore[method-assign]
    model.train()
    ins = inspector(model, lock=lock)
    ins.attention("abc")
    ins.logit_lens("abc")
    assert seen == [(False, False, False)] * 2
    assert model.training


def test_training_never_calls_the_inspection_methods(registry, tiny_config, text_file, monkeypatch):
    from lmstudio_app.training.trainer import Trainer

    def forbidden(*args, **kwargs):
        raise AssertionError("a training step called an inspection method")

    for name in ("internals", "decode_hidden", "token_embeddings"):
        monkeypatch.setattr(GPT, name, forbidden)
    monkeypatch.setattr(CausalSelfAttention, "forward_with_weights", forbidden)
    tiny_config.data.files = [str(text_file)]
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(tiny_config, registry, write_run=False)
        last = None
        for last in trainer.steps():  # steps, evaluations, samples and the watched prompts
            pass
    finally:
        torch.set_num_threads(threads)
    assert last is not None and last.step == tiny_config.train.max_steps


def test_a_failing_plugin_is_a_one_line_error_naming_it():
    from lmstudio_app.errors import PluginCallError

    class Broken(Opaque):
        def internals(self, idx, *, attention=True, residual=True):
            raise RuntimeError("boom")

    ins = Inspector(Predictor(Broken(), make_char_tokenizer(VOCAB), owner="broken_plugin"))
    with pytest.raises(PluginCallError, match="plugin 'broken_plugin' failed in internals\\(\\): RuntimeError: boom"):
        ins.attention("ab")


# --- the demo model ------------------------------------------------------------------------------------

def test_the_trained_demo_model_looks_back_at_cat(registry):
    """The default CPU recipe on the demo corpus, briefly trained: in "the cat sat on the" a head
    of the last block attends from the final "the" back to "cat" (what the docs and the README quote)."""
    from lmstudio_app.session import default_config
    from lmstudio_app.training.trainer import Trainer

    config = default_config()
    config.train.max_steps, config.train.eval_interval, config.train.sample_tokens = 60, 10**6, 0
    config.train.device = "cpu"
    trainer = Trainer(config, registry, write_run=False)
    for _ in trainer.steps():
        pass
    ins = Inspector(trainer.predictor())
    maps = ins.attention("the cat sat on the")
    assert maps.tokens == ["the", " cat", " sat", " on", " the"]
    layer, head, weight = maps.strongest(4, 1)
    assert layer == len(maps.layer_names) - 1 and weight > 0.5, (layer, head, weight)
    # the first block's strongest head from the last "the" looks at the token just before it
    first_block = maps.weights[0, :, 4, :]  # (H, T)
    assert first_block.max(axis=0).argmax() == 3
    lens = ins.logit_lens("the cat sat on the")
    best = trainer.predictor().next_token("the cat sat on the").candidates[0]
    assert lens.top_tokens[-1][-1] == best.text and lens.top_probs[-1, -1] == pytest.approx(best.prob, rel=1e-5)


# --- the CLI: lmstudio inspect RUN_DIR TEXT [--json] [--step N] ------------------------------------------

RUN_SETTINGS = ["model.context_length=16", "train.device=cpu", "train.batch_size=8", "train.max_steps=12",
                "train.eval_interval=12", "train.eval_batches=1", "train.sample_tokens=0", "train.threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny GPT run and a tiny LSTM run (the example plugin) on the demo grammar, word tokens."""
    from lmstudio_app.config import load_config
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training.trainer import Trainer
    from lmstudio_builtins.demo_grammar import generate_demo_corpus

    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("inspect_runs")
    corpus = folder / "corpus.txt"
    corpus.write_text(generate_demo_corpus(800, seed=5), encoding="utf-8")
    registry = PluginRegistry.discover([PLUGINS], use_user_dir=False)
    models = {"gpt": ["model.n_layer=2", "model.n_head=2", "model.n_embd=32"],
              "lstm": ["model.plugin=lstm", "model.n_layer=2", "model.n_embd=32"]}
    out = {}
    try:
        for name, settings in models.items():
            config = load_config(None, [f"data.files=['{corpus.as_posix()}']", "tokenizer.plugin=word",
                                        *settings, *RUN_SETTINGS])
            trainer = Trainer(config, registry, folder / name)
            for _ in trainer.steps():
                pass
            out[name] = folder / name
    finally:
        torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide
    return out


def run_inspect(args: list[str], capsys) -> tuple[int, str, str]:
    from lmstudio_app.cli import commands as cli

    code = cli.main(["--plugins-dir", str(PLUGINS), "inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_inspect_json_has_the_documented_shape_and_the_models_numbers(runs, capsys, registry):
    import json

    from lmstudio_app.inference.predictor import load_predictor

    code, out, err = run_inspect([str(runs["gpt"]), "the cat sat on the", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"run", "step", "text", "tokens", "context_start", "attention", "logit_lens", "loss"}
    assert [t["text"] for t in report["tokens"]] == ["the", " cat", " sat", " on", " the"]
    att = report["attention"]
    assert att["layers"] == ["block 1", "block 2"] and att["heads"] == 2
    weights = np.array(att["weights"])
    assert weights.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
    assert np.all(np.triu(weights, 1) == 0)
    lens = report["logit_lens"]
    assert lens["layers"] == ["embedding", "block 1", "block 2"]
    assert np.array(lens["actual_p"]).shape == (3, 4) and len(lens["top"][0]) == 5
    best = load_predictor(runs["gpt"], registry, "cpu").next_token("the cat sat on the").candidates[0]
    assert lens["top"][-1][-1] == {"id": best.id, "text": best.text, "p": pytest.approx(best.prob, abs=1e-6)}
    loss = report["loss"]
    assert [x["text"] for x in loss["tokens"]] == [" cat", " sat", " on", " the"]
    assert [x["bytes"] for x in loss["tokens"]] == [4, 4, 3, 4] and loss["bytes"] == 15
    assert loss["bits_per_byte"] == pytest.approx(sum(x["loss"] for x in loss["tokens"]) / (math.log(2) * 15),
                                                  rel=1e-5)

    # --step 0: the untrained weights kept at step 0, which attend and predict differently
    code, out, err = run_inspect([str(runs["gpt"]), "the cat sat on the", "--json", "--step", "0"], capsys)
    assert code == 0, err
    early = json.loads(out)
    assert early["step"] == 0
    assert early["loss"]["mean_nats"] > report["loss"]["mean_nats"]
    assert np.abs(np.array(early["attention"]["weights"]) - weights).max() > 1e-5  # 12 steps: a small change


def test_the_json_shape_in_the_guide_is_the_commands(runs, capsys):
    import re

    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```json\n(.*?)^```", guide, flags=re.MULTILINE | re.DOTALL)
                if '"logit_lens"' in b]
    documented = json.loads(block)
    code, out, err = run_inspect([str(runs["gpt"]), "the cat sat", "--json"], capsys)
    real = json.loads(out)

    def shape(value):  # the keys at every level, lists by their first item
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return type(value).__name__ if not isinstance(value, (int, float)) else "number"

    documented["step"] = real["step"] = None
    assert shape(documented) == shape(real)


def test_cli_inspect_prints_tables_and_says_what_a_model_does_not_expose(runs, capsys):
    code, out, err = run_inspect([str(runs["gpt"]), "the dog sat"], capsys)
    assert code == 0, err
    assert "attention:" in out and "L2H2" in out and "logit lens:" in out and "bits/byte" in out
    code, out, err = run_inspect([str(runs["lstm"]), "the dog sat"], capsys)
    assert code == 0, err
    assert "this model does not expose attention" in out
    assert "lstm 2" in out  # the LSTM's hidden states go through the logit lens
    code, out, err = run_inspect([str(runs["lstm"]), "the dog", "--json"], capsys)
    assert json.loads(out)["attention"] == {"error": "this model does not expose attention"}


def test_cli_inspect_errors_are_one_line(runs, capsys, tmp_path):
    code, _, err = run_inspect([str(tmp_path / "nowhere"), "the"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and err.startswith("lmstudio: error: ")
    code, _, err = run_inspect([str(runs["gpt"]), "the", "--step", "7"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "7" in err
    code, _, err = run_inspect([str(runs["gpt"]), ""], capsys)
    assert code != 0 and "empty" in err and len(err.strip().splitlines()) == 1
