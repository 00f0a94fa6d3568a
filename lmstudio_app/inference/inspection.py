"""Looking inside a model: attention maps, the logit lens, the embedding map and the loss over a text.

:class:`Inspector` asks a :class:`~lmstudio_app.inference.predictor.Predictor`'s model for the
optional inspection contract of :mod:`lmstudio_app.model_api` (``internals``, ``decode_hidden``,
``token_embeddings``) and turns the answers into plain numpy records the GUI and the CLI show:

* :meth:`Inspector.attention` -> :class:`AttentionMaps`: ``(L, H, T, T)`` probabilities per layer and head;
* :meth:`Inspector.logit_lens` -> :class:`LogitLens`: the residual stream after the embedding and after
  each block, decoded by the final norm and output layer: where in the stack the answer forms;
* :meth:`Inspector.embeddings` -> :class:`EmbeddingMap`: the token embeddings on their first two
  principal axes, kept aligned with the previous map by an :class:`EmbeddingProjector`;
* :meth:`Inspector.text_loss` -> :class:`TextLoss`: each token's loss, probability and rank, the mean in
  nats per token and in bits per byte (comparable across tokenizers); :func:`text_window` picks a
  stretch of the validation split to score, :func:`token_counts` the corpus frequencies the map shows.

The model is touched only under the predictor's lock (the training lock for a live model), in eval
mode and without gradients, and only while a method runs: training never calls any of this, so it
costs nothing while nobody looks. The numpy work after the model ran (PCA, top tokens) happens with
the lock released. A model without the contract raises :class:`NotExposedError`, whose message
("this model does not expose attention") is what the views show.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from ..errors import LMStudioError, ParamError, PluginCallError
from ..model_api import ModelInternals
from ..tokenizer import Token, Tokenizer
from .predictor import EmptyPromptError, Predictor

T_ = TypeVar("T_")

LN2 = math.log(2.0)


class NotExposedError(LMStudioError):
    """The model does not implement the part of the inspection contract a view needs."""

    def __init__(self, what: str) -> None:
        self.what = what  # "attention" | "hidden states" | "token embeddings"
        super().__init__(f"this model does not expose {what}")


class InspectionError(LMStudioError):
    """A model's inspection methods returned something of the wrong shape; names the plugin."""


@dataclass(frozen=True)
class AttentionMaps:
    """Attention probabilities for one prompt (cropped to its last ``context_length`` tokens)."""

    tokens: list[str]  # display strings of the T prompt tokens
    weights: np.ndarray  # (L, H, T, T) float32, [layer, head, query, key]; rows sum to 1, causal
    layer_names: list[str]  # L labels
    token_ids: list[int] = field(default_factory=list)  # T
    context_start: int = 0  # index in the whole prompt of tokens[0]

    def strongest(self, query: int, key: int) -> tuple[int, int, float]:
        """(layer, head, weight) of the head that attends most from ``query`` to ``key``."""
        column = self.weights[:, :, query, key]  # (L, H)
        layer, head = np.unravel_index(int(np.argmax(column)), column.shape)
        return int(layer), int(head), float(column[layer, head])


@dataclass(frozen=True)
class LogitLens:
    """The top next token at each layer and position, from the residual stream decoded early."""

    tokens: list[str]  # T
    layer_names: list[str]  # L+1 labels: "embedding", "block 1", ..., "block L"
    top_ids: np.ndarray  # (L+1, T) int64: the top next-token at each layer and position
    top_tokens: list[list[str]]  # (L+1) x T display strings
    top_probs: np.ndarray  # (L+1, T) float32
    actual_probs: np.ndarray  # (L+1, T-1) float32: p of the real next token (prompt[t+1]) at each layer
    token_ids: list[int] = field(default_factory=list)  # T
    context_start: int = 0


@dataclass(frozen=True)
class EmbeddingMap:
    """Token embeddings on a 2-D plane: their two principal axes, turned to match the previous map."""

    token_ids: np.ndarray  # (N,) int64
    labels: list[str]  # N display strings
    xy: np.ndarray  # (N, 2) float32, aligned with the previous map of the same projector
    counts: np.ndarray | None  # (N,) int64 corpus frequency of each token, when given
    explained: tuple[float, float]  # share of the total variance along each shown axis
    vectors: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # (N, C) float32, full space

    def neighbours(self, token_id: int, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` tokens whose embeddings are closest in direction (cosine, full space), nearest first."""
        rows = np.flatnonzero(self.token_ids == token_id)
        if rows.size == 0 or self.vectors is None:
            return []
        vecs = torch.from_numpy(self.vectors.astype(np.float64))  # torch: see _pca_2d on numpy's BLAS
        norms = vecs.norm(dim=1)
        unit = vecs / torch.where(norms == 0, torch.ones_like(norms), norms)[:, None]  # zero vector: cosine 0
        cos = (unit @ unit[int(rows[0])]).numpy()
        cos[rows[0]] = -np.inf  # not its own neighbour
        order = np.argsort(-cos, kind="stable")[: max(0, min(k, len(cos) - 1))]
        return [(self.labels[i], float(cos[i])) for i in order]


class EmbeddingProjector:
    """PCA of the embedding matrix, each map turned to line up with the one before.

    The principal axes are only defined up to sign, and two axes whose variances cross swap
    places, so a plain PCA of a model that trains makes the map flip and spin. Each new map is
    therefore rotated/reflected within its plane (orthogonal Procrustes in 2-D) to lie as close
    as possible to the previous one: the points move as the embeddings change, never jump. The
    first map (or one after the vocabulary changed) is the plain PCA.
    """

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None  # (N, 2) float64

    def reset(self) -> None:
        self._previous = None

    def project(self, embeddings: np.ndarray, labels: list[str], counts: np.ndarray | None = None,
                token_ids: np.ndarray | None = None) -> EmbeddingMap:
        vectors = np.asarray(embeddings, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(labels):
            raise InspectionError(f"token embeddings: expected ({len(labels)}, width), got shape {vectors.shape}")
        n, width = vectors.shape
        ids = np.arange(n, dtype=np.int64) if token_ids is None else np.asarray(token_ids, dtype=np.int64)
        centred = vectors - vectors.mean(axis=0, keepdims=True)
        xy, total = _pca_2d(centred)
        if self._previous is not None and self._previous.shape == xy.shape:
            # orthogonal Procrustes: the 2x2 rotation/reflection R minimising |xy R - previous|
            new, old = torch.from_numpy(xy), torch.from_numpy(self._previous)
            u, _, vt = torch.linalg.svd(new.T @ old)
            xy = (new @ (u @ vt)).numpy()
        self._previous = xy
        var = (xy**2).sum(axis=0)
        explained = (float(var[0] / total), float(var[1] / total)) if total > 0 else (0.0, 0.0)
        return EmbeddingMap(
            token_ids=ids, labels=list(labels), xy=xy.astype(np.float32),
            counts=None if counts is None else np.asarray(counts, dtype=np.int64),
            explained=explained, vectors=vectors.astype(np.float32),
        )


def _pca_2d(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Coordinates ``(N, 2)`` on the two principal axes of centred rows, and the total variance.

    The same as the first two columns of ``U * S`` in an SVD of ``centred``, from the
    eigenvectors of the smaller of its two Gram matrices (``(C, C)`` for a vocabulary larger
    than the width, ``(N, N)`` otherwise): a fraction of a full SVD's cost. In torch, float64:
    numpy's multi-threaded OpenBLAS takes 10-100x longer on a busy CPU (bench/inspect_speed.py).
    Signs are fixed (each axis's largest loading positive) so the plain PCA is deterministic.
    Fewer than two dimensions pad with zeros.
    """
    n, width = centred.shape
    x = torch.from_numpy(np.ascontiguousarray(centred, dtype=np.float64))
    total = float((x * x).sum())
    if n == 0 or width == 0:
        return np.zeros((n, 2)), total
    if width <= n:
        _, evecs = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
        axes = evecs.flip(1)[:, :2]  # (C, <=2): the principal directions
    else:
        evals, evecs = torch.linalg.eigh(x @ x.T)  # (N, N)
        top = evecs.flip(1)[:, :2]
        scale = evals.flip(0)[:2].clamp(min=0.0).sqrt()
        axes = (x.T @ top) / torch.where(scale > 0, scale, torch.ones_like(scale))  # (C, <=2): V = X^T U / S
    signs = torch.sign(axes[axes.abs().argmax(dim=0), torch.arange(axes.shape[1])])
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    xy = (x @ axes).numpy()
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    return xy, total


@dataclass(frozen=True)
class TokenLoss:
    """How well the model predicted one token of a text from the text before it."""

    token: str  # display string
    loss: float  # nats, -ln p(token | text before it)
    p: float
    rank: int  # 1 = the model's top guess
    n_bytes: int  # UTF-8 bytes of the text this token adds (see TextLoss)
    id: int = -1
    start: int = 0  # character offsets into the text, end exclusive
    end: int = 0


@dataclass(frozen=True)
class TextLoss:
    """The loss over a text, token by token; texts longer than the context in sliding windows.

    Each text byte is counted once, for the first token that reaches it (a byte-level tokenizer
    can split one character over several tokens; the later ones add 0 bytes), and the bytes
    between two tokens (spaces a word tokenizer drops) count for the token after them, so
    ``n_bytes`` is the UTF-8 size of the predicted part of the text.
    """

    tokens: list[str]  # every token of the text
    losses: list[TokenLoss]  # one per predicted token (tokens[1:])
    mean_nats: float  # per predicted token; nan when there is none
    bits_per_byte: float  # sum(loss) / (ln 2 * sum(n_bytes)) over the predicted tokens
    n_bytes: int


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total loss in nats over ``n_bytes`` bytes of text, in bits per byte (nan for no bytes)."""
    return total_nats / (LN2 * n_bytes) if n_bytes > 0 else float("nan")


def byte_counts(text: str, tokens: list[Token]) -> list[int]:
    """UTF-8 bytes each token adds: ``text[max end so far : its end]`` (see :class:`TextLoss`)."""
    counts = []
    reached = 0
    for t in tokens:
        end = max(reached, min(t.end, len(text)))
        counts.append(len(text[reached:end].encode("utf-8")))
        reached = end
    return counts


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token ID occurs in ``ids`` (a corpus split): ``(vocab_size,)`` int64, for the map's colours."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab_size).astype(np.int64)
    return counts[:vocab_size]


def text_window(ids: np.ndarray, tokenizer: Tokenizer, n_tokens: int = 256, start: int | None = None,
                seed: int | None = None) -> tuple[int, str]:
    """``(start, text)``: ``n_tokens`` tokens of ``ids`` (e.g. the validation split) from ``start``
    (clamped to fit; None = a random place, reproducible with ``seed``), decoded to text for
    :meth:`Inspector.text_loss`."""
    total = len(ids)
    if total == 0:
        raise ParamError("the text is empty: no tokens to show (is the validation split 0%?)")
    n = max(1, min(int(n_tokens), total))
    last = total - n
    if start is None:
        start = int(np.random.default_rng(seed).integers(0, last + 1))
    start = min(max(0, int(start)), last)
    return start, tokenizer.decode(int(i) for i in ids[start : start + n])


# Windows of a long text scored in one forward pass (memory: windows x context x vocabulary logits).
TEXT_LOSS_WINDOWS_PER_PASS = 16


class Inspector:
    """The inspection views' questions, asked of one predictor's model (see the module docstring)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._labels: tuple[int, list[str]] | None = None  # (vocab size, token strings), built once

    # --- the model, safely -----------------------------------------------------------------
    @property
    def _owner(self) -> str:
        return self.predictor.owner or type(self.predictor.model).__name__

    @contextlib.contextmanager
    def _model(self) -> Iterator[None]:
        """The predictor's lock, eval mode and no_grad; the previous mode restored afterwards."""
        lock = self.predictor.lock
        model = self.predictor.model
        with lock if lock is not None else contextlib.nullcontext():
            was_training = model.training
            if was_training:  # switching walks every module: skipped when already in eval mode
                model.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                if was_training:
                    model.train()

    def _call(self, what: str, fn: Callable[[], T_]) -> T_:
        """Plugin code: its exceptions become one-line PluginCallErrors naming the plugin."""
        try:
            return fn()
        except LMStudioError:
            raise
        except Exception as exc:
            raise PluginCallError(self._owner, what, exc) from exc

    def _prompt(self, text: str) -> tuple[list[Token], int]:
        """The prompt's tokens cropped to the model's context (its last tokens), and where they start."""
        tokens = self.predictor.tokens(text)
        if not tokens:
            raise EmptyPromptError()
        start = max(0, len(tokens) - self.predictor.context_length)
        return tokens[start:], start

    def _internals(self, ids: list[int], *, attention: bool, residual: bool) -> ModelInternals | None:
        idx = torch.tensor([ids], dtype=torch.long, device=self.predictor.device)
        return self._call("internals()", lambda: self.predictor.model.internals(
            idx, attention=attention, residual=residual))

    def _label(self, token_id: int) -> str:
        return self.predictor.tokenizer.token_string(int(token_id))

    # --- attention ---------------------------------------------------------------------------
    def attention(self, text: str) -> AttentionMaps:
        """Every layer's and head's attention over the prompt: ``weights[layer, head, query, key]``."""
        tokens, start = self._prompt(text)
        T = len(tokens)
        with self._model():
            out = self._internals([t.id for t in tokens], attention=True, residual=False)
            if out is None or out.attention is None:
                raise NotExposedError("attention")
            maps = []
            for i, layer in enumerate(out.attention):
                if layer.ndim != 3 or tuple(layer.shape[1:]) != (T, T):
                    raise InspectionError(f"plugin {self._owner!r}: internals() gave attention of shape "
                                          f"{tuple(layer.shape)} in layer {i + 1}, expected (heads, {T}, {T})")
                maps.append(layer.detach().float().cpu())
        if not maps or len({m.shape[0] for m in maps}) != 1:
            raise InspectionError(f"plugin {self._owner!r}: internals() gave {len(maps)} attention layers "
                                  "with differing head counts" if maps else
                                  f"plugin {self._owner!r}: internals() gave no attention layers")
        weights = torch.stack(maps).numpy()  # (L, H, T, T)
        return AttentionMaps(tokens=[t.text for t in tokens], weights=weights,
                             layer_names=[f"block {i}" for i in range(1, len(maps) + 1)],
                             token_ids=[t.id for t in tokens], context_start=start)

    # --- the logit lens --------------------------------------------------------------------
    def logit_lens(self, text: str) -> LogitLens:
        """The residual stream after the embedding and each block, decoded as if it were the last."""
        tokens, start = self._prompt(text)
        ids = [t.id for t in tokens]
        T = len(ids)
        with self._model():
            out = self._internals(ids, attention=False, residual=True)
            if out is None or out.residual is None:
                raise NotExposedError("hidden states")
            rows = []
            for i, hidden in enumerate(out.residual):
                logits = self._call("decode_hidden()", lambda h=hidden: self.predictor.model.decode_hidden(h))
                if logits is None:
                    raise NotExposedError("hidden states")
                if tuple(logits.shape) != (T, self.predictor.model.vocab_size):
                    raise InspectionError(f"plugin {self._owner!r}: decode_hidden() gave shape "
                                          f"{tuple(logits.shape)} for hidden state {i}, expected ({T}, vocab)")
                rows.append(logits.detach())
        # the rest on the device but with the lock released: the model is not needed any more
        stacked = torch.stack(rows)  # (L+1, T, V)
        # float64 as the predictor's softmax (MPS has none), so the last row matches predict exactly
        stacked = stacked.float() if stacked.device.type == "mps" else stacked.double()
        probs = torch.softmax(stacked, dim=-1)
        top_p, top_i = probs.max(dim=-1)  # (L+1, T)
        nxt = torch.tensor(ids[1:], dtype=torch.long, device=probs.device)
        actual = probs[:, :-1].gather(2, nxt.view(1, -1, 1).expand(len(rows), -1, 1)).squeeze(2)
        top_p, top_i, actual = top_p.float().cpu().numpy(), top_i.cpu().numpy(), actual.float().cpu().numpy()
        names = list(out.residual_names or [])
        if len(names) != len(rows):
            names = ["embedding", *(f"block {i}" for i in range(1, len(rows)))]
        return LogitLens(
            tokens=[t.text for t in tokens], layer_names=names, top_ids=top_i.astype(np.int64),
            top_tokens=[[self._label(i) for i in row] for row in top_i], top_probs=top_p.astype(np.float32),
            actual_probs=actual.astype(np.float32).reshape(len(rows), max(T - 1, 0)),
            token_ids=ids, context_start=start,
        )

    # --- embeddings --------------------------------------------------------------------------
    def token_labels(self) -> list[str]:
        """The display string of every token ID (cached: a large vocabulary takes a while)."""
        vocab = self.predictor.tokenizer.vocab_size
        if self._labels is None or self._labels[0] != vocab:
            self._labels = (vocab, [self._label(i) for i in range(vocab)])
        return self._labels[1]

    def embeddings(self, projector: EmbeddingProjector | None = None,
                   counts: np.ndarray | None = None) -> EmbeddingMap:
        """The token embedding matrix on a 2-D map; pass the same ``projector`` to keep maps aligned."""
        with self._model():
            matrix = self._call("token_embeddings()", self.predictor.model.token_embeddings)
            if matrix is None:
                raise NotExposedError("token embeddings")
            vectors = matrix.detach().float().cpu().numpy().copy()  # a copy: training moves on
        labels = self.token_labels()
        if vectors.ndim != 2 or vectors.shape[0] < len(labels):
            raise InspectionError(f"plugin {self._owner!r}: token_embeddings() gave shape {vectors.shape}, "
                                  f"expected ({len(labels)}, width)")
        vectors = vectors[: len(labels)]  # a padded embedding table: only the tokenizer's tokens
        if counts is not None and len(counts) != len(labels):
            raise InspectionError(f"token counts: {len(counts)} for a vocabulary of {len(labels)}")
        return (projector or EmbeddingProjector()).project(vectors, labels, counts)

    # --- loss over a text ----------------------------------------------------------------------
    def text_loss(self, text: str) -> TextLoss:
        """Each token's loss given the text before it; windows of a context overlap by half."""
        tokens = self.predictor.tokens(text)
        if not tokens:
            raise EmptyPromptError()
        ids = [t.id for t in tokens]
        ctx = self.predictor.context_length
        scored: dict[int, tuple[float, int]] = {}  # token index -> (loss, rank)
        # Windows of one length overlap by half (the last one ends at the text's end), so each
        # token after the first window keeps at least half a context before it; a token in two
        # windows is scored by the earlier one, where it has more context. They run as batches:
        # one forward pass for many windows costs far fewer Python-level operations (and GIL
        # hand-offs with a training thread) than one pass each.
        width = min(ctx, len(ids))
        starts = list(range(0, max(1, len(ids) - width), max(1, ctx // 2)))
        if starts[-1] + width < len(ids):
            starts.append(len(ids) - width)
        for chunk_start in range(0, len(starts), TEXT_LOSS_WINDOWS_PER_PASS):
            chunk = starts[chunk_start : chunk_start + TEXT_LOSS_WINDOWS_PER_PASS]
            with self._model():  # per batch: a training loop waits for one forward pass at most
                idx = torch.tensor([ids[s : s + width] for s in chunk], dtype=torch.long,
                                   device=self.predictor.device)
                logits = self._call("running the model on a text", lambda idx=idx: self.predictor.model(idx))
                rows = logits[:, : width - 1]  # the last position's target lies beyond the window
                rows = rows.double() if rows.device.type != "mps" else rows.float()
                want = torch.tensor([ids[s + 1 : s + width] for s in chunk], dtype=torch.long,
                                    device=rows.device).unsqueeze(-1)
                losses = -torch.log_softmax(rows, dim=-1).gather(-1, want).squeeze(-1)
                ranks = (rows > rows.gather(-1, want)).sum(dim=-1) + 1
                for s, window_losses, window_ranks in zip(chunk, losses.cpu().tolist(), ranks.cpu().tolist()):
                    for i, (loss, rank) in enumerate(zip(window_losses, window_ranks), s + 1):
                        scored.setdefault(i, (loss, int(rank)))
        nbytes = byte_counts(text, tokens)
        losses_out = [
            TokenLoss(token=t.text, loss=scored[i][0], p=math.exp(-scored[i][0]), rank=scored[i][1],
                      n_bytes=nbytes[i], id=t.id, start=t.start, end=t.end)
            for i, t in enumerate(tokens) if i > 0
        ]
        total = sum(x.loss for x in losses_out)
        n = sum(x.n_bytes for x in losses_out)
        return TextLoss(tokens=[t.text for t in tokens], losses=losses_out,
                        mean_nats=total / len(losses_out) if losses_out else float("nan"),
                        bits_per_byte=bits_per_byte(total, n), n_bytes=n)
