"""The local run record, the source of truth: its format (``format``), what the training thread
queues for it (``queue``), the background writer (``writer``), the event pipeline every other
line passes through (``pipeline``), the reader (``reader``), the figures of ``summary.json``
(``summary``) and the JSON files beside it (``files``).

Nothing is imported here, so that ``traintel logs`` pays only for the reader it uses.
"""
