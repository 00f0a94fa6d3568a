"""Export a trained run to a folder that Hugging Face ``transformers`` loads as it is.

    AutoModelForCausalLM.from_pretrained(out)   # GPT2LMHeadModel or LlamaForCausalLM
    AutoTokenizer.from_pretrained(out)          # PreTrainedTokenizerFast over our tokenizer.json

The built-in GPT names its weights after nanoGPT/GPT-2, and its options line up with two
transformers architectures exactly:

    GPT-2 style   positional = learned, norm = layernorm, mlp = gelu (exact, erf)
    Llama style   positional = rotary,  norm = rmsnorm,   mlp = swiglu

Anything else (relu2, qk_norm, logit_softcap, a mix of the two styles) has no equivalent and is
refused with a message naming the option. The export reads the model's params from the run's
``config.toml`` and its weights through :func:`~lmstudio_app.runs.loading.load_run`, so it needs
neither ``transformers`` nor the plugin's code; the folder is written next to its destination
and renamed into place, so an interrupted export never leaves a half-written model.

Every export leaves a marker, ``.lmstudio-export.json``, listing the files it wrote. Only that
list is ever replaced or deleted by ``overwrite``: a folder without a marker is not an earlier
export (whatever else it holds, a ``config.json`` included), files the person added beside an
export stay, a file of theirs that an export would replace is refused by name, and the run
folder itself (or anything inside it other than a folder of its own) is never a target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ..atomic_files import atomic_write_text, fsync_dir
from ..config import RunConfig, validate_plugins
from ..errors import ExportError, shown
from ..file_reads import SMALL_FILE_LIMIT, read_text
from ..tokenizer import Tokenizer
from .folder import RunDir
from .loading import load_run

if TYPE_CHECKING:
    from ..registry import PluginRegistry

FORMATS = ("hf",)
MARKER = ".lmstudio-export.json"  # the files an export wrote: the only ones an overwrite touches
ROPE_THETA = 10000.0  # the GPT plugin's rotary base; checked against the model's own tables

# Names a tokenizer's special tokens go by, per role (first match wins).
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


# The gpt model's positional encoding picks the architecture; each needs its own norm and MLP:
# positional -> (family, its name in messages, the (key, value) pairs it needs).
_FAMILIES = {
    "learned": ("gpt2", "GPT-2", (("norm", "layernorm"), ("mlp", "gelu"))),
    "rotary": ("llama", "Llama", (("norm", "rmsnorm"), ("mlp", "swiglu"))),
}


def hf_family(config: RunConfig, registry: PluginRegistry) -> str:
    """"gpt2" or "llama": the transformers architecture a run exports to; ExportError if none."""
    return _family_and_params(config, registry)[0]


def _family_and_params(config: RunConfig, registry: PluginRegistry) -> tuple[str, Any]:
    if config.model.plugin != "gpt":
        raise ExportError(
            f"model.plugin = {config.model.plugin!r} has no transformers export "
            "(only the 'gpt' model exports)"
        )
    _, p = validate_plugins(config, registry)
    if p.logit_softcap > 0:
        raise ExportError(
            f"model.logit_softcap = {p.logit_softcap} has no transformers equivalent "
            "(GPT-2 and Llama do not cap logits); train with logit_softcap = 0"
        )
    if p.qk_norm:
        raise ExportError(
            "model.qk_norm = true has no transformers equivalent "
            "(GPT-2 and Llama do not normalise queries and keys)"
        )
    if p.mlp not in ("gelu", "swiglu"):
        raise ExportError(
            f"model.mlp = {p.mlp!r} has no transformers equivalent "
            "(GPT-2 style needs gelu, Llama style needs swiglu)"
        )
    positional, other = ("learned", "rotary") if p.positional == "learned" else ("rotary", "learned")
    family, style, needs = _FAMILIES[positional]
    for key, wanted in needs:
        if getattr(p, key) != wanted:
            raise ExportError(
                f"model.{key} = {getattr(p, key)!r} with positional = {positional!r} has no transformers "
                f"equivalent ({style} style needs {wanted}; {_FAMILIES[other][1]} style needs positional = {other!r})"
            )
    return family, p


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    registry: PluginRegistry,
    fmt: str = "hf",
    *,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the run's latest (or given) checkpoint as a transformers model folder; return its path.

    ``out_dir`` must be missing or empty; with ``overwrite`` it may also hold an earlier export
    (its marker lists the files it wrote): only those are replaced, once the new files are
    complete, and nothing else in the folder is touched. Never the run folder itself.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {shown(fmt)}: unknown export format (formats: {', '.join(FORMATS)})")
    out = Path(out_dir)
    _check_not_the_run(out, Path(run_dir))
    _check_target(out, overwrite)
    config = RunDir.open(run_dir).load_config()
    family, p = _family_and_params(config, registry)  # refuse before the slow part
    _, model, tokenizer = load_run(run_dir, registry, device="cpu", checkpoint=checkpoint)
    weights = dict(model.named_parameters(remove_duplicate=False))
    head = weights.get("lm_head.weight")
    tied = head is not None and head is weights.get("transformer.wte.weight")  # tie_weights, as built
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if family == "gpt2":
        tensors = _gpt2_tensors(state, tied)
        hf_config = _gpt2_config(p, model, tensors, tied)
    else:
        _check_rotary(model, run_dir)
        tensors = _llama_tensors(state, tied)
        hf_config = _llama_config(p, model, tensors, tied)
    if state:
        raise ExportError(f"{run_dir}: weight {next(iter(state))!r} has no place in a {family} checkpoint")
    specials = special_tokens(tokenizer)
    ids = {role: tokenizer.hf.token_to_id(name) for role, name in specials.items()}
    for role in ("bos", "eos", "pad"):
        hf_config[f"{role}_token_id"] = ids.get(f"{role}_token")
    _write_folder(out, overwrite, tensors, hf_config, tokenizer, specials, model.context_length)
    return out


# -- weights ------------------------------------------------------------------------------------


def _take(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Remove and return one weight; every weight must be used exactly once."""
    try:
        return state.pop(name)
    except KeyError:
        raise ExportError(
            f"the model has no weight {name!r}; the gpt plugin's layout is not the expected one"
        ) from None


def _bias(state: dict[str, torch.Tensor], name: str, size: int) -> torch.Tensor:
    """The bias if the model has one, else zeros: GPT-2 always has biases, bias = false means 0."""
    return state.pop(name) if name in state else torch.zeros(size)


def _layers(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[2] for k in state if k.startswith("transformer.h.")})


def _gpt2_tensors(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """GPT-2's Conv1D stores (in, out), the transpose of nn.Linear's (out, in)."""
    out = {"transformer.wte.weight": _take(state, "transformer.wte.weight"),
           "transformer.wpe.weight": _take(state, "transformer.wpe.weight")}
    layers = range(_layers(state))
    norms = [f"transformer.h.{i}.{ln}" for i in layers for ln in ("ln_1", "ln_2")]
    matrices = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    linears = [f"transformer.h.{i}.{m}" for i in layers for m in matrices]
    for name in [*norms, "transformer.ln_f"]:
        weight = _take(state, f"{name}.weight")
        out[f"{name}.weight"] = weight
        out[f"{name}.bias"] = _bias(state, f"{name}.bias", weight.shape[0])
    for name in linears:
        weight = _take(state, f"{name}.weight")  # (out, in)
        out[f"{name}.weight"] = weight.t()  # (in, out)
        out[f"{name}.bias"] = _bias(state, f"{name}.bias", weight.shape[0])
    head = _take(state, "lm_head.weight")
    if not tied:
        out["lm_head.weight"] = head
    return out


def _llama_tensors(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Same layout apart from names; the fused q/k/v matrix is split in three along its rows."""
    out = {"model.embed_tokens.weight": _take(state, "transformer.wte.weight"),
           "model.norm.weight": _take(state, "transformer.ln_f.weight")}
    renames = {"attn.c_proj": "self_attn.o_proj", "mlp.c_gate": "mlp.gate_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
    for i in range(_layers(state)):
        src, dst = f"transformer.h.{i}", f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = _take(state, f"{src}.ln_1.weight")
        out[f"{dst}.post_attention_layernorm.weight"] = _take(state, f"{src}.ln_2.weight")
        for suffix in ("weight", "bias"):  # bias = true: Llama's attention_bias and mlp_bias
            if suffix == "weight" or f"{src}.attn.c_attn.bias" in state:
                q, k, v = _take(state, f"{src}.attn.c_attn.{suffix}").chunk(3, dim=0)  # rows: q | k | v
                for proj, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                    out[f"{dst}.self_attn.{proj}.{suffix}"] = t
            for ours, theirs in renames.items():
                if suffix == "weight" or f"{src}.{ours}.bias" in state:
                    out[f"{dst}.{theirs}.{suffix}"] = _take(state, f"{src}.{ours}.{suffix}")
    head = _take(state, "lm_head.weight")
    if not tied:
        out["lm_head.weight"] = head
    return out


def _check_rotary(model: torch.nn.Module, run_dir: str | Path) -> None:
    """Llama rotates the two halves of each head (rotate_half) with base ROPE_THETA: so must we."""
    buffers = dict(model.named_buffers())
    cos = buffers.get("transformer.h.0.attn.rope_cos")
    if cos is None:
        raise ExportError(f"{run_dir}: the rotary model has no transformer.h.0.attn.rope_cos table to check")
    head_dim = cos.shape[-1]
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(cos.shape[0]).float(), inv_freq)
    expected = torch.cat((angles, angles), dim=-1).cos()
    if not torch.allclose(cos.float().cpu(), expected, atol=1e-5):
        raise ExportError(
            f"{run_dir}: the model's rotary frequencies are not Llama's (rope_theta {ROPE_THETA})"
        )


def _norm_eps(model: torch.nn.Module) -> float:
    eps = getattr(dict(model.named_modules()).get("transformer.ln_f"), "eps", None)
    if not isinstance(eps, float):
        raise ExportError("the model has no transformer.ln_f norm with an eps; cannot set the norm epsilon")
    return eps


# -- config files -------------------------------------------------------------------------------


def _gpt2_config(p: Any, model: Any, tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, Any]:
    vocab, width = tensors["transformer.wte.weight"].shape
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab, "n_positions": model.context_length, "n_embd": width,
        "n_layer": sum(1 for k in tensors if k.endswith(".ln_1.weight")),
        "n_head": p.n_head,
        "n_inner": tensors["transformer.h.0.mlp.c_fc.weight"].shape[1],
        "activation_function": "gelu",  # exact (erf) GELU, as the GPT plugin's F.gelu
        "layer_norm_epsilon": _norm_eps(model),
        "resid_pdrop": p.dropout, "embd_pdrop": p.dropout, "attn_pdrop": p.dropout,
        "scale_attn_weights": True,  # scores / sqrt(head_dim), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02, "tie_word_embeddings": tied, "use_cache": True,
        "torch_dtype": "float32",
    }


def _llama_config(p: Any, model: Any, tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, Any]:
    vocab, width = tensors["model.embed_tokens.weight"].shape
    heads = p.n_head
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": width,
        "intermediate_size": tensors["model.layers.0.mlp.up_proj.weight"].shape[0],
        "num_hidden_layers": sum(1 for k in tensors if k.endswith(".input_layernorm.weight")),
        "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": width // heads,
        "hidden_act": "silu", "max_position_embeddings": model.context_length,
        "rms_norm_eps": _norm_eps(model),
        # transformers < 5 reads rope_theta, 5 reads rope_parameters (and still accepts rope_theta)
        "rope_theta": ROPE_THETA, "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensors,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in tensors,
        "attention_dropout": p.dropout,
        "pretraining_tp": 1, "initializer_range": 0.02, "tie_word_embeddings": tied, "use_cache": True,
        "torch_dtype": "float32",
    }


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The tokenizer's special tokens by transformers role (``eos_token``, ``unk_token``, ...)."""
    added = {t.content for t in tokenizer.hf.get_added_tokens_decoder().values() if t.special}
    found: dict[str, str] = {}
    for role, names in (("eos_token", _EOS_NAMES), ("bos_token", _BOS_NAMES), ("pad_token", _PAD_NAMES)):
        name = next((n for n in names if n in added), None)
        if name is not None:
            found[role] = name
    if "bos_token" not in found and found.get("eos_token") == "<|endoftext|>":
        found["bos_token"] = "<|endoftext|>"  # GPT-2's convention: one token both starts and ends
    if tokenizer.unk_id is not None:
        found["unk_token"] = tokenizer.hf.id_to_token(tokenizer.unk_id)
    return found


def _tokenizer_config(specials: dict[str, str], context_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,  # decode must give back exactly the text we trained on
        "add_bos_token": False, "add_eos_token": False,  # our encode adds nothing either
        **specials,
    }


def _generation_config(hf_config: dict[str, Any], context_length: int) -> dict[str, Any]:
    roles = ("bos_token_id", "eos_token_id", "pad_token_id")
    ids = {k: hf_config[k] for k in roles if hf_config[k] is not None}
    # The app samples (temperature 1); max_length stops generation at the trained context length.
    return {**ids, "do_sample": True, "max_length": context_length}


# -- the folder ---------------------------------------------------------------------------------


def _check_not_the_run(out: Path, run_dir: Path) -> None:
    """The run folder, or a folder inside it that the run uses, is never an export's target."""
    try:
        target, run = out.resolve(), run_dir.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ExportError(f"{out}: cannot resolve the output folder ({exc})") from None
    if target == run:
        raise ExportError(f"{out}: is the run folder itself; export to a new folder (e.g. {run / 'hf'})")
    if target.is_relative_to(run) and target.relative_to(run).parts[0] in _RUN_PARTS:
        raise ExportError(f"{out}: is inside the run's {target.relative_to(run).parts[0]}; export to a new folder")


# What a run folder holds (runs/folder.py): an export may go into a new subfolder, never into these.
_RUN_PARTS = frozenset({"checkpoints", "snapshots", "tensorboard", "config.toml", "metrics.jsonl",
                        "timeline.jsonl", "tokenizer.json"})


def _read_marker(out: Path) -> set[str]:
    """The files an earlier export listed in ``out``'s marker; ExportError if there is no valid one."""
    marker = out / MARKER
    if not marker.exists() and not marker.is_symlink():
        raise ExportError(
            f"{out}: not an earlier export (no {MARKER} marker); refusing to replace anything in it — "
            "pick a new folder"
        )
    text = read_text(marker, what="export marker", max_bytes=SMALL_FILE_LIMIT, error=ExportError)
    try:
        data = json.loads(text)
        files = data["files"]
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{marker}: not a valid export marker (expected JSON with a \"files\" list)") from None
    if not isinstance(files, list) or not all(isinstance(f, str) and _plain_name(f) for f in files):
        # A marker naming "../run/config.toml" or a subfolder must not make us delete it.
        raise ExportError(f"{marker}: lists something that is not a plain file name in {out}; refusing to use it")
    return set(files)


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MARKER) and "/" not in name and "\\" not in name \
        and "\0" not in name


def _check_target(out: Path, overwrite: bool, new_files: set[str] | None = None) -> set[str]:
    """The files of an earlier export in ``out`` that this one may replace or delete (empty for
    a new or empty folder); ExportError when ``out`` cannot take an export."""
    if not out.exists() and not out.is_symlink():
        return set()
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return set()
    if not overwrite:
        raise ExportError(f"{out}: folder is not empty; pick a new folder or overwrite an earlier export")
    old = _read_marker(out)
    for name in sorted((new_files or set(EXPORT_FILES)) - old):
        if (out / name).exists() or (out / name).is_symlink():
            raise ExportError(f"{out / name}: is not from the earlier export; refusing to replace it")
    return old


# The files an hf export writes (besides the marker).
EXPORT_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _marker_text(files: set[str] | list[str]) -> str:
    return _dumps({"lmstudio_export": 1, "format": "hf", "files": sorted(files)})


def _write_folder(
    out: Path, overwrite: bool, tensors: dict[str, torch.Tensor], hf_config: dict[str, Any],
    tokenizer: Tokenizer, specials: dict[str, str], context_length: int,
) -> None:
    """Write everything into a hidden sibling folder, then move it (or its files) into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    except OSError as exc:
        raise ExportError(f"{out}: cannot create the export folder ({exc.strerror or exc})") from None
    try:
        weights = {k: v.contiguous().clone() for k, v in tensors.items()}  # no shared storage
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_text(tmp / "config.json", _dumps(hf_config))
        generation = _generation_config(hf_config, context_length)
        atomic_write_text(tmp / "generation_config.json", _dumps(generation))
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write_text(tmp / "tokenizer_config.json", _dumps(_tokenizer_config(specials, context_length)))
        atomic_write_text(tmp / "special_tokens_map.json", _dumps(specials))
        new_files = {p.name for p in tmp.iterdir()}
        atomic_write_text(tmp / MARKER, _marker_text(new_files))
        _replace_folder(tmp, out, overwrite, new_files)
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the export ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(tmp: Path, out: Path, overwrite: bool, new_files: set[str]) -> None:
    old = _check_target(out, overwrite, new_files)  # again: the folder may have changed while we worked
    if not out.exists() or not any(out.iterdir()):  # new or empty: the whole folder at once
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return
    # An earlier export, maybe among the person's own files: replace only what it wrote. The
    # marker first lists both exports' files, so an export interrupted here can be overwritten.
    atomic_write_text(out / MARKER, _marker_text(old | new_files))
    for name in sorted(new_files):
        os.replace(tmp / name, out / name)
    for name in sorted(old - new_files):
        path = out / name
        if path.is_symlink() or path.is_file():  # never a folder, never what a link points to
            path.unlink(missing_ok=True)
    atomic_write_text(out / MARKER, _marker_text(new_files))
    fsync_dir(out)
