"""A test plugin that fails on import: the registry must record it and carry on."""

import lmstudio_missing_dependency  # noqa: F401  (deliberately not installed)

from lmstudio_app import hookimpl


@hookimpl
def lmstudio_models() -> list:
    return []
