"""A test plugin with a misspelt hook name: pluggy accepts it silently, the registry must not."""

from lmstudio_app import hookimpl


@hookimpl
def lmstudio_modles() -> list:  # typo for lmstudio_models
    return []
