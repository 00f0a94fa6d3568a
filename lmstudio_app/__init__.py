"""lmstudio_app: train a small language model and watch it learn to predict the next token.

The package root holds the Qt-free core; ``lmstudio_app.gui`` is the desktop app on top of it.
"""

from .hookspecs import hookimpl
from .params import param
from .specs import CorpusReaderSpec, ModelSpec, TokenizerSpec, TruthSpec

__version__ = "0.1.0"

__all__ = ["hookimpl", "param", "TokenizerSpec", "ModelSpec", "CorpusReaderSpec", "TruthSpec", "__version__"]
