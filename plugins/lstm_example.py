"""An example third-party model plugin: an LSTM language model in one file.

Copy this file as the starting point for your own model. To use it, either

* drop it into your user plugin folder (``lmstudio plugins`` prints where that is), or
* point the app at this folder: ``lmstudio train --plugins-dir plugins --set model.plugin=lstm``,

and "lstm" appears next to "gpt" and "bigram" in the model list, with a settings form that the
app builds from ``LSTMParams`` below. Nothing else is needed: no GUI code, no config code.

A plugin only imports the public API: ``lmstudio_app`` (the ``hookimpl`` marker),
``lmstudio_app.params`` (``param``), ``lmstudio_app.specs`` (``ModelSpec``) and
``lmstudio_app.model_api`` (``LanguageModel``, and ``ModelInternals`` for the optional
inspection methods at the end of the network). The app imports this file, calls the hook
functions marked with ``@hookimpl`` and keeps the specs they return. If this file fails to
import or a hook raises, the app lists the error in its plugins dialog and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pluggy
import torch
from torch import nn

from lmstudio_app.model_api import LanguageModel, ModelInternals
from lmstudio_app.params import param
from lmstudio_app.specs import ModelSpec

# The marker that tells the plugin manager "this function implements an lmstudio hook".
# ``from lmstudio_app import hookimpl`` is the same object.
hookimpl = pluggy.HookimplMarker("lmstudio")

__version__ = "0.1.0"  # shown in the plugins dialog


# --- 1. The parameters --------------------------------------------------------------------
# One dataclass, one ``param(...)`` per setting. The metadata (min, max, help, choices) is
# used three times: to build the form in the GUI, to check config.toml, and to check
# ``--set model.n_layer=3`` on the command line. Keep every field a simple type
# (int, float, bool, str) with a default.
@dataclass
class LSTMParams:
    n_layer: int = param(2, min=1, max=8, help="Stacked LSTM layers")
    n_embd: int = param(128, min=8, max=4096, step=8, help="Embedding and hidden-state width")
    context_length: int = param(64, min=2, max=8192, help="Tokens per training sequence")
    dropout: float = param(0.0, min=0.0, max=0.9, step=0.05, help="Dropout between layers; 0 = off")

    # Optional: rules that involve more than one field. Raise ValueError with a one-line
    # message; the app turns it into an error that names the config section.
    def validate(self) -> None:
        if self.dropout > 0 and self.n_layer == 1:
            raise ValueError("dropout needs n_layer >= 2 (an LSTM applies it between layers)")


# --- 2. The network -----------------------------------------------------------------------
# Subclass LanguageModel (a torch ``nn.Module``). The contract is small:
#   * set ``self.vocab_size`` and ``self.context_length``;
#   * ``forward(idx)`` takes token IDs of shape (B, T), T <= context_length, and returns
#     logits of shape (B, T, vocab_size), where position t only looks at tokens 0..t.
# The app provides the loss, the optimiser, the training loop, checkpoints and the
# prediction panels. Parameter counts and FLOP estimates come from the base class; the
# layer named ``lm_head`` is recognised as the output layer, ``nn.Embedding`` as embeddings.
class LSTMLanguageModel(LanguageModel):
    def __init__(self, p: LSTMParams, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_length = p.context_length
        self.embed = nn.Embedding(vocab_size, p.n_embd)
        # An LSTM reads left to right, so it is causal by construction and needs no
        # position information: it knows where it is from what it has read.
        self.lstm = nn.LSTM(
            p.n_embd,
            p.n_embd,
            num_layers=p.n_layer,
            batch_first=True,
            dropout=p.dropout if p.n_layer > 1 else 0.0,
        )
        self.lm_head = nn.Linear(p.n_embd, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.context_length:
            raise ValueError(
                f"input has {idx.shape[1]} tokens, more than context_length {self.context_length}"
            )
        x = self.embed(idx)  # (B, T, C)
        x, _ = self.lstm(x)  # (B, T, C); the final (h, c) state is not needed
        return self.lm_head(x).float()  # (B, T, V); fp32 logits keep the loss exact under autocast

    # --- Optional: the inspection contract ("Looking inside your model" in docs/plugins.md) ---
    # Three methods let the app's inspection views look inside. Implement what applies and leave
    # out the rest: an LSTM has no attention, so ``internals`` returns ``attention=None`` and the
    # attention view says "this model does not expose attention". The app calls these under the
    # training lock, in eval mode and without gradients, and only while a view is open.
    def internals(self, idx: torch.Tensor, *, attention: bool = True, residual: bool = True) -> ModelInternals:
        """Logits and the hidden states ``(T, C)`` after the embedding and after each LSTM layer."""
        x = self.embed(idx)  # (1, T, C)
        states = [x[0]]
        for layer in range(self.lstm.num_layers):
            x = self._run_layer(layer, x)  # (1, T, C): this layer's output, the next one's input
            states.append(x[0])
        names = ["embedding", *(f"lstm {i}" for i in range(1, self.lstm.num_layers + 1))]
        return ModelInternals(
            logits=self.lm_head(x[0]).float(),  # (T, V): the same numbers as forward
            attention=None,
            residual=states if residual else None,
            residual_names=names if residual else None,
        )

    def decode_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logit lens: a hidden state ``(T, C)`` read by the output layer, as if it were the last."""
        return self.lm_head(hidden).float()

    def token_embeddings(self) -> torch.Tensor:
        """The input embedding matrix ``(V, C)``, for the embedding map."""
        return self.embed.weight

    def _run_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """One layer of ``self.lstm`` on its own (``nn.LSTM`` only returns the last layer's output).

        The LSTM equations with the layer's weights; PyTorch stacks the gates as input, forget,
        cell, output. A loop over time is fine here: it only runs while a view is open.
        """
        w_ih = getattr(self.lstm, f"weight_ih_l{layer}")  # (4C, C_in)
        w_hh = getattr(self.lstm, f"weight_hh_l{layer}")  # (4C, C)
        bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
        from_input = x @ w_ih.T + bias  # (B, T, 4C): the input's share of every gate, all steps at once
        h = c = x.new_zeros(x.shape[0], w_hh.shape[1])  # (B, C)
        outputs = []
        for t in range(x.shape[1]):
            i, f, g, o = (from_input[:, t] + h @ w_hh.T).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)  # (B, T, C)


# --- 3. The spec and the hook -------------------------------------------------------------
# A ModelSpec ties a name (what users pick and write in config.toml as ``plugin = "lstm"``)
# to the params dataclass and a factory ``build(params, vocab_size)``. The app validates the
# params before calling the factory, so ``build`` receives a checked LSTMParams.
def build_lstm(params: LSTMParams, vocab_size: int) -> LSTMLanguageModel:
    return LSTMLanguageModel(params, vocab_size)


@hookimpl
def lmstudio_models() -> list[ModelSpec]:
    """The hook: return every model this plugin provides (here, one)."""
    return [
        ModelSpec(
            name="lstm",
            description="LSTM language model (example third-party plugin)",
            params=LSTMParams,
            build=build_lstm,
        )
    ]
