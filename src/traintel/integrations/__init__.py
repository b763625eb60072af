"""Framework integrations, one module per framework; import the one you use (this package
imports no framework):

- ``traintel.integrations.huggingface``: the ``transformers.Trainer`` callback
  (``report_to="traintel"``);
- ``traintel.integrations.lightning``: the Lightning logger and callback;
- ``traintel.integrations.accelerate``: the Accelerate tracker (``Accelerator(log_with=...)``).
- ``traintel.integrations.optuna``: one run per Optuna trial (``trial_run``), pruned trials
  ``pruned`` (docs/sweeps.md).

What they share (one run per training job, one line per step, names, failures) is
:class:`traintel.integrations.base.Integration`; docs/huggingface.md, docs/lightning.md and
docs/accelerate.md say what each records.
"""
