"""Learning-rate schedules, Muon, optimiser construction and state round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmstudio_app.config import TrainConfig
from lmstudio_app.params import build_params
from lmstudio_app.training.optimizers import (
    Muon,
    build_optimizers,
    lr_at,
    lr_scale,
    orthogonalize,
    set_learning_rate,
)
from lmstudio_builtins.bigram import BIGRAM_SPEC, BigramParams
from lmstudio_builtins.gpt import GPT_SPEC, GPTParams

CPU = torch.device("cpu")


def cfg(**values) -> TrainConfig:
    base = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "max_steps": 110}
    return build_params(TrainConfig, {**base, **values}, "train")


def tiny_gpt(**overrides):
    torch.manual_seed(0)
    values = {"n_layer": 2, "n_head": 2, "n_embd": 16, "context_length": 8, **overrides}
    return GPT_SPEC.build(build_params(GPTParams, values), 11)


def test_warmup_is_linear_to_the_peak() -> None:
    c = cfg(schedule="constant")
    assert lr_at(0, c) == pytest.approx(1e-4)
    assert lr_at(4, c) == pytest.approx(5e-4)
    assert lr_at(9, c) == pytest.approx(1e-3)
    assert lr_at(10, c) == lr_at(109, c) == pytest.approx(1e-3)


def test_cosine_and_linear_decay_to_min_lr() -> None:
    cos, lin = cfg(schedule="cosine"), cfg(schedule="linear")
    assert lr_at(10, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(5.5e-4)  # halfway: the mean of peak and floor
    assert lr_at(35, cos) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr_at(110, cos) == pytest.approx(1e-4)
    assert lr_at(500, cos) == pytest.approx(1e-4)  # past the end: stays at the floor
    assert lr_at(60, lin) == pytest.approx(5.5e-4)
    assert lr_at(85, lin) == pytest.approx(1e-3 - 0.75 * 9e-4)


def test_wsd_is_flat_then_warms_down() -> None:
    c = cfg(schedule="wsd", warmdown_fraction=0.2, max_steps=100)  # warmdown over steps 80..100
    assert lr_at(50, c) == pytest.approx(1e-3)
    assert lr_at(79, c) == pytest.approx(1e-3)
    assert lr_at(90, c) == pytest.approx(5.5e-4)
    assert lr_at(100, c) == pytest.approx(1e-4)
    assert lr_scale(90, c) == pytest.approx(0.55)


def test_no_warmup_starts_at_peak() -> None:
    assert lr_at(0, cfg(warmup_steps=0, schedule="cosine")) == pytest.approx(1e-3)


def test_orthogonalize_flattens_singular_values() -> None:
    torch.manual_seed(0)
    g = torch.randn(32, 8) @ torch.diag(torch.logspace(-1.5, 1, 8))
    before = torch.linalg.svdvals(g)
    assert before.max() / before.min() > 100  # badly conditioned
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.min() > 0.5 and s.max() < 1.3
    assert orthogonalize(g).shape == g.shape


def test_muon_reduces_loss_on_a_regression_problem() -> None:
    torch.manual_seed(0)
    target = torch.randn(16, 8)
    x = torch.randn(256, 8)
    weight = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([weight], lr=0.05)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(x @ weight.T, x @ target.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert set(opt.state[weight]) == {"momentum_buffer"}


def test_muon_batches_same_shape_matrices_without_changing_the_update() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in ((6, 4), (6, 4), (3, 5), (2, 3, 2))]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    Muon(params, lr=0.1, momentum=0.5).step()
    for p, old in zip(params, before):
        grad = p.grad.reshape(p.size(0), -1)
        update = grad + 0.5 * grad  # nesterov on a fresh buffer: grad + momentum * grad
        scale = max(1.0, grad.size(0) / grad.size(1)) ** 0.5
        expected = old - 0.1 * scale * orthogonalize(update).view_as(p)
        torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=1e-5)


def test_muon_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="only matrices"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def assert_partition(model, optimizers) -> list[int]:
    seen = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # every trainable parameter exactly once
    return seen


@pytest.mark.parametrize("tie", [True, False])
def test_adamw_decays_matrices_but_not_vectors(tie: bool) -> None:
    model = tiny_gpt(tie_weights=tie)
    (opt,) = build_optimizers(model, cfg(weight_decay=0.1), CPU)
    assert isinstance(opt, torch.optim.AdamW)
    assert_partition(model, [opt])
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)


@pytest.mark.skipif(
    tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 4), reason="fused CPU AdamW needs torch 2.4"
)
def test_adamw_uses_the_fused_kernel_on_cpu() -> None:
    (opt,) = build_optimizers(tiny_gpt(), cfg(), CPU)
    assert opt.defaults["fused"] is True


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = tiny_gpt(tie_weights=False)
    adamw, muon = build_optimizers(model, cfg(optimizer="muon", muon_lr=0.03, muon_momentum=0.9), CPU)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    assert_partition(model, [adamw, muon])
    roles = model.param_roles()
    by_id = {id(p): roles[name] for name, p in model.named_parameters()}
    assert {by_id[id(p)] for p in muon.param_groups[0]["params"]} == {"matrix"}
    assert {by_id[id(p)] for g in adamw.param_groups for p in g["params"]} == {"embedding", "head", "vector"}
    assert muon.param_groups[0]["initial_lr"] == 0.03
    assert muon.param_groups[0]["momentum"] == 0.9
    set_learning_rate([adamw, muon], 0.5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.015)
    assert all(g["lr"] == pytest.approx(5e-4) for g in adamw.param_groups)


def test_muon_on_a_model_without_matrices_is_just_adamw() -> None:
    model = BIGRAM_SPEC.build(build_params(BigramParams, {}), 7)
    optimizers = build_optimizers(model, cfg(optimizer="muon"), CPU)
    assert [type(o) for o in optimizers] == [torch.optim.AdamW]
    assert_partition(model, optimizers)


def test_frozen_parameters_are_left_out() -> None:
    model = tiny_gpt()
    model.transformer.wpe.weight.requires_grad_(False)
    optimizers = build_optimizers(model, cfg(optimizer="muon"), CPU)
    assert id(model.transformer.wpe.weight) not in assert_partition(model, optimizers)


def flatten(optimizers) -> tuple[dict[str, torch.Tensor], str]:
    """Optimiser state as a flat tensor dict (for safetensors) plus JSON for the groups."""
    tensors, groups = {}, []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for pid, state in sd["state"].items():
            for key, value in state.items():
                tensors[f"{i}.{pid}.{key}"] = value
        groups.append(sd["param_groups"])
    return tensors, json.dumps(groups)


def unflatten(tensors: dict[str, torch.Tensor], groups_json: str) -> list[dict]:
    groups = json.loads(groups_json)
    dicts = [{"state": {}, "param_groups": g} for g in groups]
    for name, value in tensors.items():
        i, pid, key = name.split(".", 2)
        dicts[int(i)]["state"].setdefault(int(pid), {})[key] = value
    return dicts


def one_step(model, optimizers, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (4, 8), generator=gen)
    logits = model(idx)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 11), idx[:, 1:].reshape(-1))
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_state_survives_a_safetensors_round_trip(tmp_path, optimizer: str) -> None:
    c = cfg(optimizer=optimizer)
    model = tiny_gpt()
    optimizers = build_optimizers(model, c, CPU)
    for seed in range(3):
        one_step(model, optimizers, seed)
    tensors, groups_json = flatten(optimizers)
    save_file(tensors, str(tmp_path / "optim.safetensors"))

    restored_model = tiny_gpt()
    restored_model.load_state_dict(model.state_dict())
    restored = build_optimizers(restored_model, c, CPU)
    for opt, sd in zip(restored, unflatten(load_file(str(tmp_path / "optim.safetensors")), groups_json)):
        opt.load_state_dict(sd)

    one_step(model, optimizers, 99)
    one_step(restored_model, restored, 99)
    for (name, a), b in zip(model.state_dict().items(), restored_model.state_dict().values()):
        assert torch.equal(a, b), name
