"""The dockable panels of the main window, one per stage of the pipeline.

Holds: ``data``, ``tokenizer``, ``model``, ``training``, ``predictions``, ``pipeline``,
``timeline`` and ``inside`` (attention, logit lens, embeddings, loss over text: ``inside_*``). Each
panel is a view over the session: it calls the session (or the run controller) and reacts to the
session's events, re-delivered on the GUI thread by :class:`lmstudio_app.gui.events.AppEvents`;
panels never call each other or announce changes on each other's behalf.

May import: ``lmstudio_app.gui.widgets``, the GUI helpers (``events``, ``worker``, ``queries``,
``dialogs``, ``theme``), the session and the core. Never ``main_window``.
"""
