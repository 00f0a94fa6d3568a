"""The built-in models (GPT, bigram) and the example LSTM plugin: shapes, causality, training."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pluggy
import pytest
import torch
import torch.nn.functional as F

from lmstudio_app import hookspecs
from lmstudio_app.errors import ParamError
from lmstudio_app.model_api import LanguageModel
from lmstudio_app.params import build_params
from lmstudio_builtins.bigram import BIGRAM_SPEC, BigramParams
from lmstudio_builtins.gpt import GPT_SPEC, GPTParams

LSTM_PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "lstm_example.py"
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 16, "context_length": 12}


def tiny_gpt(vocab_size: int = 13, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    return GPT_SPEC.build(build_params(GPTParams, {**TINY, **overrides}, "model"), vocab_size)


def train_steps(model: LanguageModel, data: torch.Tensor, steps: int, lr: float, block: int) -> list[float]:
    """Plain AdamW on random windows of ``data``; returns the loss of every step."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (8,), generator=gen)
        x = torch.stack([data[s : s + block] for s in starts])  # (B, T)
        y = torch.stack([data[s + 1 : s + block + 1] for s in starts])  # (B, T)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "positional,norm,mlp,tie",
    list(
        itertools.product(
            ("learned", "rotary"), ("layernorm", "rmsnorm"), ("gelu", "relu2", "swiglu"), (True, False)
        )
    ),
)
def test_gpt_forward_shapes_for_every_option(positional: str, norm: str, mlp: str, tie: bool) -> None:
    model = tiny_gpt(positional=positional, norm=norm, mlp=mlp, tie_weights=tie, qk_norm=tie)
    idx = torch.randint(0, 13, (3, 7))
    logits = model(idx)
    assert logits.shape == (3, 7, 13)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert ("transformer.wpe.weight" in dict(model.named_parameters())) == (positional == "learned")
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "overrides", [{}, {"positional": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True}]
)
@pytest.mark.parametrize("bf16", [False, True])  # bf16 on a CPU takes the explicit attention path
def test_gpt_is_causal(overrides: dict, bf16: bool) -> None:
    model = tiny_gpt(**overrides).eval()
    idx = torch.randint(0, 13, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 13
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        before, after = model(idx), model(changed)
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-6)  # the past cannot see the future
    assert not torch.allclose(before[:, 6:], after[:, 6:])  # the changed token itself does matter


def test_gpt_cpu_bf16_attention_matches_the_fused_kernel() -> None:
    attn = tiny_gpt(positional="rotary").transformer.h[0].attn
    q, k, v = (torch.randn(3, 2, 9, 8) for _ in range(3))  # (B, nh, T, hd)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    low = attn._explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), dropout=0.0)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=3e-2, rtol=3e-2)
    model = tiny_gpt(positional="rotary")
    idx = torch.randint(0, 13, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    torch.testing.assert_close(logits, model(idx), atol=3e-2, rtol=3e-2)


def test_gpt_rejects_input_longer_than_context() -> None:
    model = tiny_gpt()
    with pytest.raises(ValueError, match="13 tokens.*context_length is 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize(
    "values,key",
    [
        ({"n_embd": 130, "n_head": 4}, "n_embd"),
        ({"n_embd": 12, "n_head": 4, "positional": "rotary"}, "rotary"),
        ({"n_layer": 0}, "model.n_layer"),
        ({"mlp": "tanh"}, "model.mlp"),
        ({"n_heads": 4}, "model.n_heads"),
    ],
)
def test_gpt_params_errors_name_the_key(values: dict, key: str) -> None:
    with pytest.raises(ParamError, match=key):
        build_params(GPTParams, values, "model")


def test_gpt_parameter_count_matches_hand_count() -> None:
    vocab, C, L, T = 65, 128, 4, 64
    model = GPT_SPEC.build(build_params(GPTParams, {}), vocab)
    per_block = 2 * C + 3 * C * C + C * C + 4 * C * C + 4 * C * C  # 2 LayerNorm gains, qkv, proj, MLP
    expected = vocab * C + T * C + L * per_block + C  # tied lm_head counted once, final LayerNorm
    assert model.num_parameters() == expected == 804_096
    assert model.num_parameters(non_embedding=True) == expected - vocab * C - T * C
    roles = model.param_roles()
    assert roles["transformer.wte.weight"] == "embedding"
    assert "lm_head.weight" not in roles  # tied: reported once, owned by the embedding


def test_gpt_untied_head_has_head_role_and_own_weights() -> None:
    model = tiny_gpt(tie_weights=False)
    assert model.param_roles()["lm_head.weight"] == "head"
    assert model.num_parameters() == tiny_gpt(tie_weights=True).num_parameters() + 13 * 16


def test_gpt_flops_per_token_formula() -> None:
    model = tiny_gpt()
    L, C, T, V = 2, 16, 12, 13
    matmul_weights = model.num_parameters(non_embedding=True) + V * C  # tied lm_head does V x C work
    assert model.flops_per_token() == 6 * matmul_weights + 12 * L * C * T
    assert model.describe()["flops_per_token"] == model.flops_per_token()


def test_gpt_zero_init_proj_and_residual_scaling() -> None:
    zeroed = tiny_gpt(zero_init_proj=True)
    assert zeroed.transformer.h[0].attn.c_proj.weight.abs().max() == 0
    assert zeroed.transformer.h[1].mlp.c_proj.weight.abs().max() == 0
    scaled = GPT_SPEC.build(build_params(GPTParams, {"n_layer": 8, "n_embd": 64}), 50)
    std = scaled.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001


def test_gpt_softcap_bounds_logits() -> None:
    model = tiny_gpt(logit_softcap=0.5)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    assert model(torch.randint(0, 13, (2, 5))).abs().max() <= 0.5


def test_gpt_runs_under_bf16_autocast_and_compile() -> None:
    model = tiny_gpt(positional="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True)
    idx = torch.randint(0, 13, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # traces without graph breaks
    assert torch.allclose(compiled(idx), model(idx), atol=1e-5)


def test_tiny_gpt_overfits_a_repeated_sequence() -> None:
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 0])
    data = pattern.repeat(20)
    model = tiny_gpt(vocab_size=10, n_embd=32)
    losses = train_steps(model, data, steps=100, lr=1e-2, block=12)
    assert losses[0] > 2.0  # about ln(10) at the start
    # After 100 steps the model predicts the memorised sequence almost perfectly; measured ~0.06.
    assert sum(losses[-5:]) / 5 < 0.2


def test_bigram_starts_uniform_and_learns_bigram_statistics() -> None:
    model = BIGRAM_SPEC.build(build_params(BigramParams, {"context_length": 16}), 6)
    data = torch.tensor([0, 1, 2, 3, 4, 5] * 30)  # each token has exactly one successor
    losses = train_steps(model, data, steps=60, lr=0.1, block=16)
    assert losses[0] == pytest.approx(math.log(6), abs=1e-5)  # zero table = uniform predictions
    assert losses[-1] < 0.2
    probs = model(torch.tensor([[2]])).softmax(-1)[0, 0]
    assert probs.argmax().item() == 3
    assert model.flops_per_token() == 6 * 6
    with pytest.raises(ValueError, match="context_length is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def load_lstm_plugin():
    name = "lstm_example_under_test"
    spec = importlib.util.spec_from_file_location(name, LSTM_PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_lstm_example_plugin_registers_and_trains() -> None:
    module = load_lstm_plugin()
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(module, name="lstm_example")
    (specs,) = manager.hook.lmstudio_models()  # one list from one plugin
    assert [s.name for s in specs] == ["lstm"]
    params = build_params(specs[0].params, {"n_layer": 1, "n_embd": 16, "context_length": 12}, "model")
    torch.manual_seed(0)
    model = specs[0].build(params, 10)
    assert isinstance(model, LanguageModel)
    assert model.param_roles()["lm_head.weight"] == "head"
    data = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]).repeat(20)
    losses = train_steps(model, data, steps=30, lr=2e-2, block=12)
    assert sum(losses[-3:]) / 3 < 0.5  # from ~2.36; measured ~0.09
    with pytest.raises(ParamError, match="dropout needs n_layer"):
        build_params(specs[0].params, {"n_layer": 1, "dropout": 0.2}, "model")


def test_lstm_example_imports_only_the_public_api() -> None:
    tree = ast.parse(LSTM_PLUGIN.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed = {
        "__future__",
        "dataclasses",
        "pluggy",
        "torch",
        "lmstudio_app",
        "lmstudio_app.params",
        "lmstudio_app.specs",
        "lmstudio_app.model_api",
    }
    assert imported <= allowed
