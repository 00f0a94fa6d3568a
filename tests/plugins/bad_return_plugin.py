"""A test plugin whose hooks return the wrong types: a dict, and a list holding a non-spec."""

from lmstudio_app import hookimpl


@hookimpl
def lmstudio_models():
    return {"name": "not-a-spec"}  # should be a list of ModelSpec


@hookimpl
def lmstudio_tokenizers():
    return ["not-a-spec"]  # a list, but not of TokenizerSpec
