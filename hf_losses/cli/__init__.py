"""The ``hf-losses`` command and what it runs.

``main`` (the ``hf-losses`` entry point: list, describe, config, plot, demo), ``demo`` (MiniLM on imbalanced
reviews), ``comparison`` (train a baseline and a candidate loss, print and write the report; shared with the
examples), ``tuning`` (optuna over a loss's parameters), ``plotting`` (loss curves from ``trainer_state.json``).
"""
