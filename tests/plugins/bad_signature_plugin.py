"""A test plugin whose hook takes an argument the hookspec does not have.

pluggy refuses it when registering (PluginValidationError); the registry records that.
"""

from lmstudio_app import hookimpl


@hookimpl
def lmstudio_models(device) -> list:  # the spec takes no arguments
    return []
