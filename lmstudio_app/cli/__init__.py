"""The headless ``lmstudio`` commands: train, eval, predict, generate, timeline, inspect, export, plugins.

Holds: ``commands`` (the parser and every command but train and inspect), ``inspect`` (attention,
the logit lens and the per-token loss of a saved run, and its JSON shape), ``train`` (progress lines, Ctrl-C,
TensorBoard, torchrun ranks; imported only when training since it pulls in torch), ``common``
(exit codes, the one-line error, config paths and ``--set``), ``runs`` (``runs``, ``compare``,
``rename``: the runs index), ``sweep`` (``sweep`` and ``lr-find``).

May import: the whole core (training, inference, runs, data, config, registry, ...). Never the
session or the GUI: the launcher hands the CLI a function that opens the app.
"""
