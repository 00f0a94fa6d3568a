"""Asking a model what comes next: next-token predictions, per-token surprise, generation.

Holds: ``predictor`` (``Predictor``: a live model shared with training through the trainer's lock,
or a model loaded from a run folder), ``scoring`` (``PromptScore``: one prompt scored once),
``distributions`` (softmax, top-k/top-p, candidates), ``inspection`` (``Inspector``: attention maps,
the logit lens, the embedding map and the loss over a text, from the models' optional inspection
contract), ``truth`` (``TokenTruth``: a synthetic
corpus's exact next-token odds in a tokenizer's tokens, KL divergence, the entropy floor).

May import: ``runs``, ``data``, ``config``, ``devices`` and the plugin API. Never training, the
session, the CLI or the GUI.
"""
