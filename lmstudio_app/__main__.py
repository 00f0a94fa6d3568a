"""``python -m lmstudio_app``: the same as the ``lmstudio`` command (and what torchrun's ``-m`` runs)."""

import sys

from .launcher import main

if __name__ == "__main__":
    sys.exit(main())
