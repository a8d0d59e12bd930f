"""Integrations with trainers from other libraries, each an optional extra that ``import hf_losses`` never needs:

* :mod:`hf_losses.integrations.trl` -- ``LossSFTTrainer`` / ``LossSFTConfig`` for TRL's ``SFTTrainer``
  (``pip install hf-losses[trl]``; importing that module imports TRL).
"""
