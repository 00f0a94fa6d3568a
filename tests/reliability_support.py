"""Shared by tests/test_reliability.py and tests/test_reliability_files.py: the test corpus, a tiny
config that trains in a second and the check that an error message is one line naming what failed."""

from __future__ import annotations

from pathlib import Path

from lmstudio_app.config import config_from_dict

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = "the cat sees a dog.\nmy bird likes the ball.\na dog chases the red hat.\n"


def tiny_config(files, model=None, **train):
    settings = {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 8, "max_steps": 6,
                "eval_interval": 3, "log_interval": 1, "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 1,
                **train}
    gpt = {"plugin": "gpt", "n_layer": 1, "n_embd": 16, "n_head": 2, "context_length": 8, **(model or {})}
    return config_from_dict({"data": {"files": [str(f) for f in files]}, "model": gpt, "train": settings}, "test")


def assert_one_line(exc: BaseException, *needles: str) -> str:
    message = str(exc)
    assert "\n" not in message and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message
