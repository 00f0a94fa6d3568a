"""A run folder on disk and everything written into it or read back from it.

Holds: ``folder`` (``RunDir``: config.toml, metrics.jsonl, timeline.jsonl, tokenizer.json,
checkpoints/), ``timeline`` (the watched prompts' history read back), ``snapshots`` (the weights
at log-spaced steps),
``checkpoints`` (safetensors + JSON, written atomically, never unpickled), ``rng_state`` (the
random generators' state in a checkpoint), ``loading`` (rebuild a saved run's model), ``lock``
(one training process per run folder), ``integrity`` (what a resume checks before it touches
anything: ``latest``, state.json, the config beside the weights, the corpus fingerprint; the
leftovers of a kill),
``metrics_sinks`` (TensorBoard and CSV), ``export_hf`` (a Hugging Face transformers folder) and
``index`` (every run's name, status and summary: ``RunsIndex``; run.json, outcome.json) with
``location`` (the runs folder and the added folders, from the settings).

May import: ``data``, ``config``, ``registry``, ``devices``, ``atomic_files``, ``file_reads`` and the plugin API.
Never inference, training, the CLI or the GUI.
"""
