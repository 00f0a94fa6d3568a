"""A test plugin that provides a model name already taken ("gpt" by the built-ins, or
"test-tiny" by good_plugin) next to a new one ("dup-unique")."""

from dataclasses import dataclass

from lmstudio_app import ModelSpec, hookimpl


@dataclass
class NoParams:
    pass


def build(params, vocab_size):
    raise AssertionError("never built in tests")


@hookimpl
def lmstudio_models() -> list[ModelSpec]:
    return [
        ModelSpec("gpt", "A second 'gpt'.", NoParams, build),
        ModelSpec("test-tiny", "A second 'test-tiny'.", NoParams, build),
        ModelSpec("dup-unique", "A name nobody else uses.", NoParams, build),
    ]
