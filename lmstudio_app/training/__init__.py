"""Training a model: the Qt-free loop and what it is made of.

Holds: ``trainer`` (``Trainer``: the step loop with pause/resume/stop and a lock for probing
between steps), ``preparation`` (what a run needs before its first step: corpus, tokenizer,
model, optimisers, samplers, resume), ``control`` (``TrainingControl`` flags, ``StepMetrics``),
``controller`` (``RunController``: one run on its own thread, its state as an enum),
``watch`` (the watched prompts' predictions, recorded at each evaluation), ``probe`` (a copy of
the live weights to probe), ``optimizers`` (schedules, Muon), ``faults`` (out of memory, NaN), ``distributed`` (torchrun),
``model_preview`` (a model's size, memory and time per step before training it), ``model_checks``
(before training: will the model fit in memory, are its logits (B, T, V) and causal),
``sweep`` (a grid of runs in a sweep folder, resumable), ``lr_finder`` (the learning-rate range test).

May import: ``inference``, ``runs``, ``data``, ``config``, ``registry``, ``devices`` and the plugin
API. Never the session, the CLI or the GUI.
"""
