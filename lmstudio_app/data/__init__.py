"""The data path up to the batches: text files → one corpus string → token arrays → batches.

Holds: ``files`` (reading files and folders strictly, with progress and cancel), ``corpus``
(tokenizing into compact train/val token arrays, batch sampling), ``continuations`` (what
followed a context in the training text: counts from a suffix-array index), ``coverage`` (a run
whose training tokens are mostly ``<unk>`` stops before training), ``progress`` (the CLI's
progress lines for reading and tokenizing). The bundled demo corpus and its
grammar live in the built-in plugin (``lmstudio_builtins.demo_grammar``, the ``"demo"`` truth).

May import: the plugin API (``errors``, ``params``, ``tokenizer``), ``atomic_files``, ``file_reads``
and ``resources``. Never torch's training machinery, runs, the GUI or the built-in plugins.
"""
