"""Class weights from class counts: inverse frequency ("balanced") and the effective number of samples.

* ``"balanced"``: ``w_c = n / (C * n_c)`` (scikit-learn's ``compute_class_weight("balanced")``, King & Zeng 2001);
  an empty class gets 0 (there is nothing of it to weigh).
* ``"effective_num"``: ``w_c = (1 - beta) / (1 - beta^{n_c})`` normalised to sum to ``C`` (Cui et al. 2019,
  "Class-Balanced Loss Based on Effective Number of Samples", eq. 4 and Sec. 4); an empty class gets the
  largest weight of the present classes.

Pure torch: the losses (``class_balanced``) and the trainer (``class_weights="balanced"``) share these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

WEIGHT_METHODS = ("balanced", "effective_num")


def balanced_weights(counts: Sequence[float] | Tensor) -> Tensor:
    """``w_c = n / (C * n_c)`` with ``n = sum_c n_c``, 0 for an empty class; a float64 tensor."""
    counts = torch.as_tensor(counts).to(torch.float64)
    return torch.where(counts > 0, counts.sum() / (counts.numel() * counts.clamp(min=1.0)), 0.0)


def effective_number_weights(counts: Sequence[float] | Tensor, beta: float) -> Tensor:
    """Cui et al. 2019: ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised so that ``sum_c w_c = C``; float64.

    ``(1 - beta**n) / (1 - beta)`` is the effective number of samples of a class with ``n`` samples;
    ``beta = 0`` gives equal weights, ``beta -> 1`` inverse class frequency. An empty class (``n_c = 0``,
    whose effective number is 0) gets the largest weight of the present classes.
    """
    samples = torch.as_tensor(counts).to(torch.float64)
    if beta == 0.0:
        weights = torch.ones_like(samples)
    else:
        # 1 - beta**n computed as -expm1(n * log(beta)): exact for beta close to 1 (e.g. 0.9999)
        weights = (1.0 - beta) / -torch.expm1(samples * torch.log(torch.tensor(beta, dtype=torch.float64)))
        present = samples > 0
        if not present.all():
            if not present.any():
                raise ValueError(f"effective_number_weights: no class has a sample, got counts {samples.tolist()}.")
            weights = weights.masked_fill(~present, weights[present].max())
    return weights * samples.numel() / weights.sum()


def weights_from_counts(counts: Sequence[float] | Tensor, method: str, beta: float = 0.999) -> list[float]:
    """Class weights from class counts by ``method`` (one of :data:`WEIGHT_METHODS`), as Python floats.

    Empty classes get weight 0 with ``"balanced"`` and the largest weight with ``"effective_num"``.
    """
    counts = torch.as_tensor(counts).to(torch.float64)
    if counts.numel() == 0 or counts.sum() <= 0:
        raise ValueError("class weights: the training labels contain no countable class.")
    if method == "balanced":
        weights = balanced_weights(counts)
    elif method == "effective_num":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class weights: `class_weights_beta` must be in [0, 1), got {beta}.")
        weights = effective_number_weights(counts, beta)
    else:
        raise ValueError(f"class weights: unknown method {method!r}; use one of {list(WEIGHT_METHODS)} or numbers.")
    return weights.tolist()
