"""``lmstudio inspect RUN_DIR TEXT``: attention, the logit lens and the per-token loss of a saved run.

The JSON shape (``--json``, one object on one line; floats rounded to 6 digits)::

    {"run": "runs/demo", "step": 300 | null,      # --step N, or null for the latest checkpoint
     "text": "the cat sat on the",
     "tokens": [{"id": 3, "text": "the", "start": 0, "end": 3}, ...],   # the whole text
     "context_start": 0,              # attention and the lens see tokens[context_start:]
     "attention": {"layers": ["block 1", ...], "heads": 4,
                   "weights": [[[[w, ...], ...], ...], ...]}            # [layer][head][query][key]
                | {"error": "this model does not expose attention"},
     "logit_lens": {"layers": ["embedding", "block 1", ...],
                    "top": [[{"id": 5, "text": " cat", "p": 0.41}, ...], ...],  # [layer][position]
                    "actual_p": [[p, ...], ...]}        # [layer][position]: p of tokens[position + 1]
                 | {"error": "this model does not expose hidden states"},
     "loss": {"tokens": [{"id": 5, "text": " cat", "loss": 1.2, "p": 0.3, "rank": 2, "bytes": 4}, ...],
              "mean_nats": 1.1 | null, "bits_per_byte": 0.4 | null, "bytes": 14}}  # tokens[1:]

``loss`` covers the whole text (sliding windows past the context); its means are null for a text
of one token. A part the model does not expose is an ``error`` entry, not a failure: the command
still prints the rest and exits 0.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..registry import PluginRegistry

EPILOG = "JSON shape (--json): see the docstring of lmstudio_app/cli/inspect.py or docs/plugins.md"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``inspect`` subcommand's arguments (called from ``commands.build_parser``)."""
    p = sub.add_parser("inspect", help="attention, the logit lens and the per-token loss of TEXT",
                       description="Look inside a run's model: which tokens each head attends to, the top "
                                   "token at every layer (the logit lens) and the loss of each token of TEXT.",
                       epilog=EPILOG)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--json", action="store_true", help="print JSON (shape in docs/plugins.md)")
    p.add_argument("--step", type=int, metavar="N",
                   help="the model as it was at step N (a snapshot or a kept checkpoint; default: the latest)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def _r(x: float) -> float | None:
    """Rounded for JSON; nan (no value) becomes null, which JSON can carry."""
    x = float(x)
    return None if x != x else round(x, 6)


def inspect_report(inspector: Any, text: str) -> dict[str, Any]:
    """The JSON object above (less ``run`` and ``step``) for ``text``."""
    from ..inference.inspection import NotExposedError

    predictor = inspector.predictor
    tokens = predictor.tokens(text)
    report: dict[str, Any] = {
        "text": text,
        "tokens": [{"id": t.id, "text": t.text, "start": t.start, "end": t.end} for t in tokens],
        "context_start": max(0, len(tokens) - predictor.context_length),
    }
    try:
        maps = inspector.attention(text)
        report["attention"] = {"layers": maps.layer_names, "heads": int(maps.weights.shape[1]),
                               "weights": [[[[_r(w) for w in row] for row in head] for head in layer]
                                           for layer in maps.weights.tolist()]}
    except NotExposedError as exc:
        report["attention"] = {"error": str(exc)}
    try:
        lens = inspector.logit_lens(text)
        report["logit_lens"] = {
            "layers": lens.layer_names,
            "top": [[{"id": int(i), "text": s, "p": _r(p)} for i, s, p in zip(ids, strs, ps)]
                    for ids, strs, ps in zip(lens.top_ids.tolist(), lens.top_tokens, lens.top_probs.tolist())],
            "actual_p": [[_r(p) for p in row] for row in lens.actual_probs.tolist()],
        }
    except NotExposedError as exc:
        report["logit_lens"] = {"error": str(exc)}
    loss = inspector.text_loss(text)
    report["loss"] = {
        "tokens": [{"id": x.id, "text": x.token, "loss": _r(x.loss), "p": _r(x.p), "rank": x.rank, "bytes": x.n_bytes}
                   for x in loss.losses],
        "mean_nats": _r(loss.mean_nats), "bits_per_byte": _r(loss.bits_per_byte), "bytes": loss.n_bytes,
    }
    return report


def _print_text(report: dict[str, Any]) -> None:
    tokens = [t["text"] for t in report["tokens"]][report["context_start"]:]
    print("tokens: " + " ".join(f"{t!r}" for t in tokens))
    att = report["attention"]
    print("\nattention: for each query token, the key each head attends to most (weight)")
    if "error" in att:
        print(f"  {att['error']}")
    else:
        heads = [f"L{li + 1}H{hi + 1}" for li in range(len(att["layers"])) for hi in range(att["heads"])]
        width = max(12, *(len(repr(t)) + 6 for t in tokens))
        print(f"  {'query':<14}" + "".join(f"{h:<{width}}" for h in heads))
        for q, token in enumerate(tokens):
            cells = []
            for layer in att["weights"]:
                for head in layer:
                    row = head[q]
                    k = max(range(len(row)), key=lambda i: row[i])
                    cells.append(f"{tokens[k]!r} {row[k]:.2f}")
            print(f"  {token!r:<14}" + "".join(f"{c:<{width}}" for c in cells))
    lens = report["logit_lens"]
    print("\nlogit lens: after each token (rows), the top next token when each layer (columns) is decoded")
    if "error" in lens:
        print(f"  {lens['error']}")
    else:
        cells = [[f"{c['text']!r} {c['p']:.2f}" for c in row] for row in lens["top"]]  # [layer][position]
        width = max(14, *(len(c) + 2 for row in cells for c in row), *(len(n) + 2 for n in lens["layers"]))
        print(f"  {'after':<14}" + "".join(f"{name:<{width}}" for name in lens["layers"]))
        for position, token in enumerate(tokens):
            print(f"  {token!r:<14}" + "".join(f"{row[position]:<{width}}" for row in cells))
    loss = report["loss"]
    print("\nloss of each token given the text before it")
    print(f"  {'token':<14} {'loss':>7} {'p':>7} {'rank':>6} {'bytes':>5}")
    for x in loss["tokens"]:
        print(f"  {x['text']!r:<14} {x['loss']:7.3f} {x['p']:7.2%} {x['rank']:>6} {x['bytes']:>5}")
    if loss["mean_nats"] is None:
        print("  (one token: nothing to predict)")
    else:
        print(f"  mean {loss['mean_nats']:.4f} nats/token, {loss['bits_per_byte']:.4f} bits/byte "
              f"over {loss['bytes']} bytes")


def cmd_inspect(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from ..inference.inspection import Inspector
    from ..inference.predictor import load_predictor

    predictor = load_predictor(args.run_dir, registry, args.device, step=args.step)
    report = {"run": str(args.run_dir), "step": args.step, **inspect_report(Inspector(predictor), args.text)}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_text(report)
    return 0
