"""Generation time per token as the text grows: the old full re-decode against incremental decoding.

    python bench/generation_speed.py [--tokens 40000] [--tokenizer bpe]

Generates ``--tokens`` tokens from a tiny untrained GPT twice with the same seed, through
``Predictor`` (the model's forward and sampling as the app does them):

- *before*: after every token the whole generated text was decoded again and compared with
  what was already shown (the loop ``Predictor.generate_iter`` had until now), O(length) a token;
- *after*: :class:`~lmstudio_app.inference.predictor.IncrementalDecoder`, a window of a few tokens.

Both run interleaved, token by token, so that load on a shared machine hits them alike (the old
loop's work also slows the new one's steps a little; ``--only after`` times one loop alone). It
prints one table: the median ms per token at several lengths, side by side, and checks that both
give exactly the same text. Timings are of the whole step (forward, sampling, decode), 1 thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lmstudio_app.inference.distributions import filter_probs, softmax
from lmstudio_app.inference.predictor import IncrementalDecoder, Predictor
from lmstudio_app.params import build_params
from lmstudio_app.registry import PluginRegistry
from lmstudio_builtins.demo_grammar import generate_demo_corpus

BUCKETS = ((0, 1_000), (9_000, 10_000), (19_000, 20_000), (30_000, 40_000))


class OldLoop:
    """The loop before: decode(generated) after each token, startswith(emitted), yield the rest."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.emitted = ""
        self.pieces: list[str] = []

    def push(self, token_id: int) -> None:
        self.generated.append(token_id)
        text = self.tokenizer.decode(self.generated)
        if not text.endswith("\ufffd") and text.startswith(self.emitted) and len(text) > len(self.emitted):
            self.pieces.append(text[len(self.emitted) :])
            self.emitted = text

    def finish(self) -> str:
        self.pieces.append(self.tokenizer.decode(self.generated).removeprefix(self.emitted))
        return "".join(self.pieces)


class NewLoop:
    """The loop now (as in ``generate_iter``): one IncrementalDecoder.push per token."""

    def __init__(self, tokenizer) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.pieces: list[str] = []

    def push(self, token_id: int) -> None:
        self.pieces.append(self.decoder.push(token_id))

    def finish(self) -> str:
        return "".join(self.pieces) + self.decoder.finish()


def generate(predictor: Predictor, loops: dict, prompt: list[int], n: int) -> dict[str, np.ndarray]:
    """Both loops token by token, interleaved (a load spike on a shared machine hits both alike),
    each with its own ids and random stream: ms per token (forward + sampling + decode)."""
    state = {name: (list(prompt), np.random.default_rng(7)) for name in loops}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(n):
        for name, loop in loops.items():
            ids, rng = state[name]
            start = time.perf_counter()
            probs = filter_probs(softmax(predictor._last_logits(ids[-predictor.context_length :]), 1.0), None, None)
            next_id = int(rng.choice(len(probs), p=probs))
            ids.append(next_id)
            loop.push(next_id)
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) * 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--tokenizer", default="bpe", choices=("bpe", "byte", "char", "word"))
    parser.add_argument("--only", choices=("before", "after"), help="time one loop alone (is it flat by itself?)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    registry = PluginRegistry.discover(use_user_dir=False)
    corpus = generate_demo_corpus(3000, seed=1)
    spec = registry.tokenizer(args.tokenizer)
    extra = {"vocab_size": 512} if args.tokenizer == "bpe" else {}
    tokenizer = registry.build_tokenizer(args.tokenizer, build_params(spec.params, extra), lambda: [corpus], None)
    model_spec = registry.model("gpt")
    params = build_params(model_spec.params, {"n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32})
    model = registry.build_model("gpt", params, tokenizer.vocab_size)
    predictor = Predictor(model, tokenizer, device="cpu")
    prompt = tokenizer.encode("the ")

    loops = {"before": OldLoop(tokenizer), "after": NewLoop(tokenizer)}
    if args.only:
        loops = {args.only: loops[args.only]}
    times = generate(predictor, loops, prompt, args.tokens)
    texts = {name: loop.finish() for name, loop in loops.items()}
    same = len(set(texts.values())) == 1

    print(f"{args.tokens:,} tokens, {args.tokenizer} tokenizer ({tokenizer.vocab_size} ids), 1-layer GPT width 32, "
          f"1 thread; identical text: {same}")
    print(f"{'tokens generated':>18}  {'before ms/token':>15}  {'after ms/token':>14}  {'before / after':>14}"
          "   (medians)")
    for lo, hi in BUCKETS:
        if hi > args.tokens:
            continue
        before, after = (float(np.median(times[n][lo:hi])) if n in times else float("nan")
                         for n in ("before", "after"))
        print(f"{f'{lo:,}–{hi:,}':>18}  {before:>15.3f}  {after:>14.3f}  {before / after:>13.1f}×")
    if not same:
        raise SystemExit("the incremental text differs from the full decode")


if __name__ == "__main__":
    main()
