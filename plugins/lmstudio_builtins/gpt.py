"""GPT: a decoder-only transformer in one readable file (after Karpathy's nanoGPT).

Token IDs go in, next-token logits come out::

    idx (B, T) -> token embedding (+ learned positions) -> n_layer x Block -> final norm -> lm_head

Each Block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (pre-norm residual stream).
The defaults are the classic GPT-2 recipe at toy size: learned positions, LayerNorm, GELU,
tied input/output embeddings, 4 layers, 4 heads, width 128, context 64, no dropout.
The options switch it towards the modern (Llama-style) recipe: rotary positions, RMSNorm,
SwiGLU. Parameter names follow nanoGPT/GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
...) so the weights map one-to-one onto a Hugging Face GPT-2 or Llama checkpoint.

For the app's inspection views, ``GPT.internals`` recomputes a sequence with each block's
attention probabilities written out (the training step keeps the fused kernel), returns the
residual stream after the embedding and each block, and ``decode_hidden`` reads any of them
through the final norm and output layer (the logit lens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmstudio_app.model_api import LanguageModel, ModelInternals
from lmstudio_app.params import param
from lmstudio_app.specs import ModelSpec


@dataclass
class GPTParams:
    n_layer: int = param(4, min=1, max=48, help="Transformer blocks stacked on top of each other")
    n_head: int = param(4, min=1, max=64, help="Attention heads per block (n_embd must divide evenly)")
    n_embd: int = param(128, min=8, max=8192, step=8, help="Width of the residual stream (embedding size)")
    context_length: int = param(64, min=2, max=8192, help="Longest sequence of tokens the model sees at once")
    dropout: float = param(0.0, min=0.0, max=0.9, step=0.05, help="Dropout rate while training; 0 = off")
    bias: bool = param(False, help="Biases in the linear layers and LayerNorms")
    positional: str = param(
        "learned",
        choices=("learned", "rotary"),
        help="learned = GPT-2 position table; rotary = RoPE inside attention",
    )
    norm: str = param("layernorm", choices=("layernorm", "rmsnorm"), help="Normalisation layer")
    qk_norm: bool = param(False, help="Normalise queries and keys per head before attention")
    mlp: str = param(
        "gelu",
        choices=("gelu", "relu2", "swiglu"),
        help="Feed-forward activation; swiglu uses 2/3 of the hidden width to keep its size",
    )
    mlp_ratio: float = param(4.0, min=0.5, max=16.0, step=0.5, help="Feed-forward hidden width / n_embd")
    tie_weights: bool = param(True, help="Share the token embedding with the output layer")
    zero_init_proj: bool = param(False, help="Start attention/MLP output projections at zero")
    logit_softcap: float = param(0.0, min=0.0, max=1000.0, help="Squash logits to ±cap with tanh; 0 = off")

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        head_dim = self.n_embd // self.n_head
        if self.positional == "rotary" and head_dim % 2:
            raise ValueError(
                f"n_embd / n_head = {head_dim} must be even for positional = 'rotary' (n_embd {self.n_embd}, "
                f"n_head {self.n_head})"
            )


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (Llama); computed in fp32 for stability."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, eps=1e-5, bias=bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: the Hugging Face Llama layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# Longest context for which bf16 attention on a CPU is computed explicitly (see
# CausalSelfAttention._explicit_attention): its score matrix grows with T squared.
EXPLICIT_ATTENTION_MAX_T = 1024


class CausalSelfAttention(nn.Module):
    def __init__(self, p: GPTParams) -> None:
        super().__init__()
        self.n_head = p.n_head
        self.head_dim = p.n_embd // p.n_head
        self.dropout = p.dropout
        self.c_attn = nn.Linear(p.n_embd, 3 * p.n_embd, bias=p.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(p.n_embd, p.n_embd, bias=p.bias)
        self.c_proj.is_residual_proj = True  # type: ignore[assignment]  # read by GPT._init_weights
        self.resid_dropout = nn.Dropout(p.dropout)
        self.q_norm = make_norm(p.norm, self.head_dim, p.bias) if p.qk_norm else None
        self.k_norm = make_norm(p.norm, self.head_dim, p.bias) if p.qk_norm else None
        self.rotary = p.positional == "rotary"
        if self.rotary:
            # Rotation angles per (position, frequency); not weights, so kept out of the state_dict.
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
            angles = torch.outer(torch.arange(p.context_length).float(), inv_freq)  # (T_max, hd/2)
            angles = torch.cat((angles, angles), dim=-1)  # (T_max, hd)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and T <= EXPLICIT_ATTENTION_MAX_T:
            y = self._explicit_attention(q, k, v, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(B, nh, T, hd)`` each: normed and rotated as attention uses them."""
        B, T, C = x.shape
        nh = self.n_head
        qkv = self.c_attn(x).view(B, T, 3 * nh, self.head_dim)  # (B, T, 3nh, hd): q heads, k heads, v heads
        qk, v = qkv[:, :, : 2 * nh], qkv[:, :, 2 * nh :]  # (B, T, 2nh, hd), (B, T, nh, hd)
        if self.q_norm is not None and self.k_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :nh]), self.k_norm(qk[:, :, nh:])), dim=2)
        if self.rotary:
            cos = self.rope_cos[:T, None].to(qk.dtype)  # (T, 1, hd), cast so autocast keeps q/k in bf16
            sin = self.rope_sin[:T, None].to(qk.dtype)
            qk = qk * cos + rotate_half(qk) * sin  # q and k turned together: half the small kernels
        q, k = qk.transpose(1, 2).split(nh, dim=1)  # (B, nh, T, hd) each
        return q, k, v.transpose(1, 2)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`forward` returns (eval mode) and the attention probabilities ``(B, nh, T, T)``.

        The inspection path (``GPT.internals``): the same queries and keys, with the softmax
        written out in fp32 so each row is a probability distribution over the keys, zero above
        the diagonal. The training step never calls it and keeps the fused kernel.
        """
        B, T, C = x.shape
        q, k, v = self._qkv(x)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # exact zeros above the diagonal
        y = (att.to(v.dtype) @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), att

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
        """softmax(q k^T / sqrt(hd) + causal mask) v, written out for bf16 on a CPU.

        PyTorch's fused CPU attention is slow in bf16 (at head size 32 its backward pass takes
        5x as long as these few ops). The scores, the scaling and the mask are one ``baddbmm``;
        the softmax kernel accumulates in fp32 whatever its input type. It holds the whole
        (T, T) score matrix, so long contexts keep the fused kernel (EXPLICIT_ATTENTION_MAX_T).
        """
        B, nh, T, hd = q.shape
        mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # (T, T): -inf above the diagonal
        att = torch.baddbmm(
            mask.expand(B * nh, T, T), q.reshape(B * nh, T, hd), k.reshape(B * nh, T, hd).transpose(1, 2),
            alpha=1.0 / math.sqrt(hd),
        ).softmax(dim=-1)  # (B*nh, T, T)
        att = F.dropout(att, dropout, training=dropout > 0)
        return (att.to(v.dtype) @ v.reshape(B * nh, T, hd)).view(B, nh, T, hd)


class MLP(nn.Module):
    def __init__(self, p: GPTParams) -> None:
        super().__init__()
        self.kind = p.mlp
        hidden = round(p.mlp_ratio * p.n_embd)
        if p.mlp == "swiglu":
            # Three matrices instead of two: 2/3 of the width keeps the parameter count comparable.
            hidden = max(1, round(hidden * 2 / 3))
            self.c_gate = nn.Linear(p.n_embd, hidden, bias=p.bias)
        self.c_fc = nn.Linear(p.n_embd, hidden, bias=p.bias)
        self.c_proj = nn.Linear(hidden, p.n_embd, bias=p.bias)
        self.c_proj.is_residual_proj = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.c_gate(x)) * self.c_fc(x)  # (B, T, H)
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()  # (B, T, H)
        else:
            # (B, T, H). The exact (erf) GELU, as nanoGPT's nn.GELU: on a CPU it is 2.5x faster
            # than GPT-2's tanh approximation ("gelu_new"), and the two differ by < 1e-3.
            h = F.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, p: GPTParams) -> None:
        super().__init__()
        self.ln_1 = make_norm(p.norm, p.n_embd, p.bias)
        self.attn = CausalSelfAttention(p)
        self.ln_2 = make_norm(p.norm, p.n_embd, p.bias)
        self.mlp = MLP(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token computes on its own
        return x

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` (eval mode) and this block's attention probabilities ``(B, nh, T, T)``."""
        y, att = self.attn.forward_with_weights(self.ln_1(x))
        x = x + y
        return x + self.mlp(self.ln_2(x)), att


class GPT(LanguageModel):
    def __init__(self, p: GPTParams, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        self.config = p
        self.vocab_size = vocab_size
        self.context_length = p.context_length
        layers: dict[str, nn.Module] = {"wte": nn.Embedding(vocab_size, p.n_embd)}
        if p.positional == "learned":
            layers["wpe"] = nn.Embedding(p.context_length, p.n_embd)
        layers["drop"] = nn.Dropout(p.dropout)
        layers["h"] = nn.ModuleList(Block(p) for _ in range(p.n_layer))
        layers["ln_f"] = make_norm(p.norm, p.n_embd, p.bias)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(p.n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        if p.tie_weights:
            # One matrix both reads tokens in and scores them out; the embedding owns it.
            self.lm_head.weight = self.transformer.wte.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_proj", False):
                if self.config.zero_init_proj:
                    std = 0.0
                else:  # GPT-2: keep the residual stream's variance from growing with depth
                    std = 0.02 / math.sqrt(2 * self.config.n_layer)
            if std:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            else:
                nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self._check_input(idx)
        x = self.transformer.drop(self._embed(idx))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        return self._head(x)

    def _check_input(self, idx: torch.Tensor) -> None:
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token IDs of shape (batch, time), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.context_length:
            raise ValueError(
                f"input has {T} tokens but the model's context_length is {self.context_length}; "
                f"crop it to the last {self.context_length} tokens"
            )

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream's start: token embedding (+ learned position), ``(B, T, C)``."""
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
            x = x + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, output layer and softcap: residual stream ``(..., C)`` -> logits ``(..., V)``."""
        logits = self.lm_head(self.transformer.ln_f(x)).float()  # fp32 so the loss and softmax are exact
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    # --- the inspection contract (model_api.ModelInternals; docs/plugins.md) -------------------
    def internals(self, idx: torch.Tensor, *, attention: bool = True, residual: bool = True) -> ModelInternals:
        """Logits, per-layer attention probabilities and the residual stream for ``idx`` ``(1, T)``.

        The same computation as :meth:`forward` in eval mode (no dropout); with ``attention``
        each block's softmax is written out (``CausalSelfAttention.forward_with_weights``).
        """
        self._check_input(idx)
        x = self._embed(idx)
        stream = [x[0]]
        maps: list[torch.Tensor] = []
        for block in self.transformer.h:
            if attention:
                x, att = block.forward_with_weights(x)
                maps.append(att[0])  # (nh, T, T)
            else:
                x = block(x)
            stream.append(x[0])
        names = ["embedding", *(f"block {i}" for i in range(1, len(self.transformer.h) + 1))]
        return ModelInternals(
            logits=self._head(x)[0],
            attention=maps if attention else None,
            residual=stream if residual else None,
            residual_names=names if residual else None,
        )

    def decode_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logit lens: a residual-stream state ``(T, C)`` through the final norm and lm_head."""
        return self._head(hidden)

    def token_embeddings(self) -> torch.Tensor:
        return self.transformer.wte.weight

    def flops_per_token(self) -> float:
        """6 N + 12 L C T (nanoGPT/PaLM): N counts every matmul weight, the output layer included.

        A tied output layer shares its weight with the (free) embedding lookup, so it is
        added back here: its V x C multiply is real work on every token.
        """
        p = self.config
        n = self.num_parameters(non_embedding=True)
        if p.tie_weights:
            n += self.lm_head.weight.numel()
        return 6.0 * n + 12.0 * p.n_layer * p.n_embd * p.context_length


def build_gpt(params: GPTParams, vocab_size: int) -> GPT:
    return GPT(params, vocab_size)


GPT_SPEC = ModelSpec(
    name="gpt",
    description="Decoder-only transformer (nanoGPT-style); options for rotary, RMSNorm, SwiGLU",
    params=GPTParams,
    build=build_gpt,
)
