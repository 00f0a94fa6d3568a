"""The data path up to the batches: text files → one corpus string → token arrays → batches.

Holds: ``files`` (reading files and folders strictly, with progress and cancel), ``corpus``
(tokenizing into compact train/val token arrays, batch sampling), ``demo_grammar`` (the bundled
demo corpus and its grammar's exact next-word odds).

May import: the plugin API (``errors``, ``params``, ``tokenizer``), ``atomic_files`` and
``resources``. Never torch's training machinery, runs, the GUI or the built-in plugins.
"""
