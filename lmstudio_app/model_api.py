"""The contract every model plugin's network fulfils.

The training engine, the inference code and the GUI only use what is declared here, so a
third-party model (an LSTM, a Mamba block, ...) is trained and probed exactly like the
built-in GPT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

ParamRole = Literal["matrix", "embedding", "head", "vector"]


@dataclass
class ModelInternals:
    """What a model shows of itself while reading one sequence: the optional inspection contract.

    Returned by :meth:`LanguageModel.internals` for token IDs of shape ``(1, T)``. Every field
    but ``logits`` may be ``None`` when the model has no such thing (an LSTM has no attention);
    each inspection view then says "this model does not expose ...".

    * ``logits``: ``(T, V)``, the same numbers ``forward`` returns for this sequence.
    * ``attention``: one ``(H, T, T)`` tensor per layer, ``[head, query, key]``; each row is a
      probability distribution over the keys (sums to 1) and is zero above the diagonal.
    * ``residual``: the hidden state ``(T, C)`` after the embedding and after each block
      (``n_layer + 1`` entries), the input of the logit lens (:meth:`LanguageModel.decode_hidden`).
    * ``residual_names``: a label per ``residual`` entry ("embedding", "block 1", ...).
    """

    logits: torch.Tensor
    attention: list[torch.Tensor] | None = None
    residual: list[torch.Tensor] | None = None
    residual_names: list[str] | None = None


class LanguageModel(nn.Module):
    """A next-token predictor: token IDs ``(B, T)`` in, logits ``(B, T, vocab_size)`` out.

    Subclasses set ``vocab_size`` and ``context_length`` (the longest sequence ``forward``
    accepts; the engine and the inference code crop to it) and implement ``forward``.
    """

    vocab_size: int
    context_length: int

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        raise NotImplementedError

    # --- Optional inspection contract (docs/plugins.md, "Looking inside your model") ----------
    # A model that overrides none of these still trains and predicts; the app's inspection
    # views then say what the model does not expose. The app calls them under the training
    # lock, in eval mode and under ``torch.no_grad()``, so they cost nothing while nobody looks.

    def internals(self, idx: torch.Tensor, *, attention: bool = True, residual: bool = True) -> ModelInternals | None:
        """Attention probabilities and hidden states for ``idx`` of shape ``(1, T)``; None = not exposed.

        ``attention`` / ``residual`` say which parts the caller wants, so a view that shows one
        need not pay for the other (a field left out is ``None``).
        """
        return None

    def decode_hidden(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits ``(T, V)`` from a hidden state ``(T, C)`` of ``internals().residual``: the logit lens.

        For a pre-norm transformer this is the final norm followed by the output layer, so
        decoding the last entry of ``residual`` gives back ``logits``. None = not exposed.
        """
        return None

    def token_embeddings(self) -> torch.Tensor | None:
        """The input embedding matrix ``(V, C)``, one row per token ID; None = not exposed."""
        return None

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable parameters; ``non_embedding`` leaves out token/position embeddings."""
        roles = self.param_roles()
        total = 0
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if non_embedding and roles.get(name) == "embedding":
                continue
            total += p.numel()
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), for MFU and time estimates.

        The default is the standard 6 * N (non-embedding parameters); models with attention
        add their 12 * layers * width * context term.
        """
        return 6.0 * self.num_parameters(non_embedding=True)

    def param_roles(self) -> dict[str, ParamRole]:
        """How each parameter should be optimised (used for Muon vs AdamW and weight decay).

        Default: weights of ``nn.Embedding`` are "embedding", a module named ``lm_head`` is
        "head", tensors with fewer than 2 dimensions are "vector", the rest "matrix".
        Tied weights are reported once, under their first name.
        """
        roles: dict[str, ParamRole] = {}
        seen: set[int] = set()
        for mod_name, module in self.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(module, nn.Embedding):
                    roles[full] = "embedding"
                elif mod_name.split(".")[-1] == "lm_head":
                    roles[full] = "head"
                elif p.ndim < 2:
                    roles[full] = "vector"
                else:
                    roles[full] = "matrix"
        return roles

    def describe(self) -> dict[str, float]:
        """Figures the GUI shows before training: parameters and FLOPs per token."""
        return {
            "parameters": float(self.num_parameters()),
            "non_embedding_parameters": float(self.num_parameters(non_embedding=True)),
            "flops_per_token": float(self.flops_per_token()),
            "context_length": float(self.context_length),
        }
