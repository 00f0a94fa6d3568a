"""Reusable widgets that know nothing of the session: forms, charts, chips, plots.

Holds: ``param_form`` (a form generated from a params dataclass), ``plugin_chooser``,
``token_chips``, ``probability_chart`` (candidates table, bar chart, sampling controls),
``loss_plot`` and ``plot_data`` (the live loss curves), ``training_progress``, ``heatmap`` (labelled
heatmaps and a thumbnail grid), ``embedding_map`` (a labelled 2-D scatter), ``text_loss`` (text coloured by loss).

May import: Qt, pyqtgraph, ``theme`` and the core's plain data types (params, metrics,
predictions). Never the session, the panels or ``main_window``.
"""
