"""Watching a model learn: a few prompts' predictions, recorded by the engine as it trains.

At step 0 (before any update), at every evaluation and at each step whose weights the run keeps
(10, 20, 50, 100, …: see :mod:`lmstudio_app.runs.snapshots`) the trainer asks the live model about each
watched prompt (``[watch] prompts`` in the run's config) and appends one record to the run
folder's ``timeline.jsonl``: for each prompt the top candidates with their probabilities, the
entropy, the probability and rank of the token that really follows (for a prompt taken from the
text) and the KL divergence from the truth (for a synthetic corpus whose generating distribution a
plugin knows, like the demo grammar's). The records are what the app's timeline and
``lmstudio timeline`` show, for a live run and a loaded one alike.

The file stays small however long the run: once it holds :data:`MAX_RECORDS` records, every other
record is dropped and evaluations are recorded half as often (the history keeps its shape, at a
coarser grain). The cost is one short forward pass per prompt per evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import WatchConfig
from ..data.corpus import TokenizedCorpus
from ..errors import LMStudioError
from ..inference.distributions import entropy_nats
from ..tokenizer import Tokenizer

if TYPE_CHECKING:
    from ..inference.predictor import Predictor
    from ..inference.truth import TokenTruth
    from ..runs.folder import JsonLines

MAX_RECORDS = 512  # timeline records kept in a run folder (see the module docstring)
DEFAULT_PROMPTS = 4  # prompts taken from the validation text when nothing else says which
PROMPT_TOKENS = 12  # tokens of text in each such prompt (fewer if the model's context is shorter)


@dataclass(frozen=True)
class WatchedPrompt:
    text: str
    target: str = ""  # the text that really follows (a prompt taken from the corpus); "" if unknown


def prompts_of(config: WatchConfig) -> list[WatchedPrompt]:
    targets = config.targets or [""] * len(config.prompts)
    return [WatchedPrompt(text, target) for text, target in zip(config.prompts, targets)]


def prompts_from_text(tokenizer: Tokenizer, corpus: TokenizedCorpus, context_length: int,
                      count: int = DEFAULT_PROMPTS) -> list[WatchedPrompt]:
    """``count`` stretches of the validation text (the training text if there is none), spread
    evenly over it, each with the token that follows it: what the model should learn to predict."""
    tokens = corpus.val if len(corpus.val) > 1 else corpus.train
    length = max(1, min(PROMPT_TOKENS, context_length - 1))
    if len(tokens) <= length:
        return []
    ends = np.linspace(length, len(tokens) - 1, num=count, dtype=np.int64)
    prompts: list[WatchedPrompt] = []
    for end in sorted(set(int(e) for e in ends)):
        text = tokenizer.decode(tokens[end - length: end].tolist())
        target = tokenizer.decode([int(tokens[end])])
        if text.strip() and WatchedPrompt(text, target) not in prompts:
            prompts.append(WatchedPrompt(text, target))
    return prompts


def choose_prompts(config: WatchConfig, tokenizer: Tokenizer, corpus: TokenizedCorpus, context_length: int,
                   suggested: Sequence[str] = ()) -> WatchConfig:
    """The run's watched prompts: the config's own, else ``suggested`` (a synthetic corpus's
    prompts), else a few from the validation text. Stored in the run's config, so a resumed run
    and a loaded one watch the same prompts."""
    if config.prompts:
        return config
    chosen = [WatchedPrompt(p) for p in suggested] or prompts_from_text(tokenizer, corpus, context_length)
    return WatchConfig(prompts=[p.text for p in chosen], targets=[p.target for p in chosen] if any(
        p.target for p in chosen) else [], top_k=config.top_k)


class Watcher:
    """Records the watched prompts' predictions into a run's timeline (see the module docstring)."""

    def __init__(self, prompts: list[WatchedPrompt], tokenizer: Tokenizer, top_k: int,
                 truth: TokenTruth | None = None, log: JsonLines | None = None) -> None:
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.top_k = top_k
        self.truth = truth
        self.log = log
        self._targets = [self._target_id(p) for p in prompts]
        self._truths = [truth.next_token(p.text) if truth is not None else None for p in prompts]
        existing = log.read() if log is not None else []
        self.recorded_steps = [int(r.get("step", 0)) for r in existing]
        self.every = 1  # record every ``every``-th evaluation (doubles when the log is thinned)
        while len(existing) // self.every >= MAX_RECORDS:
            self.every *= 2
        self._evaluations = 0

    def _target_id(self, prompt: WatchedPrompt) -> int | None:
        """The id of the token that follows the prompt, if its text tokenizes as the prompt's
        tokens plus exactly that one token."""
        if not prompt.target:
            return None
        head = self.tokenizer.encode(prompt.text)
        whole = self.tokenizer.encode(prompt.text + prompt.target)
        return whole[-1] if len(whole) == len(head) + 1 and whole[: len(head)] == head else None

    def due(self, step: int, kept: bool = False) -> bool:
        """Whether this evaluation is one to record. Step 0 always, once; so is a step whose
        weights the run keeps (``kept``: the early, log-spaced snapshots, where most happens)."""
        if step == 0 or kept:
            return step not in self.recorded_steps
        self._evaluations += 1
        return self._evaluations % self.every == 0 and step not in self.recorded_steps

    def record(self, step: int, predictor: Predictor) -> dict[str, Any]:
        """Ask the model about every watched prompt; append the record to the timeline."""
        entries = [self._entry(predictor, i) for i in range(len(self.prompts))]
        record: dict[str, Any] = {"step": step, "prompts": entries}
        kls = [e["kl_to_truth"] for e in entries if e.get("kl_to_truth") is not None]
        if kls:
            record["kl_to_truth"] = float(np.mean(kls))
        if self.log is not None:
            self.log.append(record)
        self.recorded_steps.append(step)
        if self.log is not None and len(self.recorded_steps) >= MAX_RECORDS:
            self._thin()
        return record

    def _entry(self, predictor: Predictor, index: int) -> dict[str, Any]:
        prompt = self.prompts[index]
        try:
            prediction = predictor.next_token(prompt.text, k=self.top_k)
        except LMStudioError as exc:  # e.g. a prompt of unknown characters only: say so in the record
            return {"error": str(exc)}
        probs = prediction.probs
        entry: dict[str, Any] = {
            "top": [[c.id, round(c.prob, 6)] for c in prediction.candidates],
            "entropy": round(entropy_nats(probs), 6),
        }
        target = self._targets[index]
        if target is not None and target < len(probs):
            entry["target_p"] = float(probs[target])
            entry["target_rank"] = int((probs > probs[target]).sum()) + 1
        true = self._truths[index]
        if true is not None and self.truth is not None:
            entry["kl_to_truth"] = float(self.truth.kl(true, probs))
        return entry

    def _thin(self) -> None:
        """Keep every other record (step 0 first among them) and record half as often from now on."""
        assert self.log is not None
        kept = self.log.read()[::2]
        self.log.rewrite(kept)
        self.recorded_steps = [int(r.get("step", 0)) for r in kept]
        self.every *= 2
