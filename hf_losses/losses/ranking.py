"""Recommendation objectives for next-item / scoring models: relevance traded against diversity and popularity.

Logits are scores over a catalogue, ``(N, V)`` (``V`` items); labels are the true item index per row, ``(N,)``,
``ignore_index`` for rows that do not count (padding positions of a sequence model). Item unit: one labelled row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX
from hf_losses.losses.base import (
    LogitsLoss,
    Normalize,
    NumItems,
    Reduction,
    compute_dtype,
    expand_sample_weight,
    float32_region,
    reduce_by_items,
    select_num_items,
)
from hf_losses.losses.checks import as_vector, check_choice, check_finite, check_int, check_number
from hf_losses.losses.inputs import index_labels
from hf_losses.losses.weighting import ComponentWeighting, Weighting, item_fraction
from hf_losses.registry import register_loss

COMPONENTS = ("relevance", "diversity", "popularity")


# ---------------------------------------------------------------------------------------------- functional core
def sampled_softmax_cross_entropy(logits: Tensor, labels: Tensor, negatives: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``-log softmax(o)_0`` over the candidates ``[y, n_1..n_M]`` with ``o_j = z_j - log Q_j``.

    ``negatives`` (M,) are shared by all rows (sampled from ``Q``); a negative equal to the row's true item (an
    "accidental hit") is masked out. logQ correction: Bengio and Senecal 2008, Jean et al. 2015, Yi et al. 2019.
    """
    candidates = torch.cat([labels[:, None], negatives[None, :].expand(labels.shape[0], -1)], dim=1)
    corrected = logits.gather(1, candidates) - log_q.to(logits.dtype)[candidates]
    accidental_hit = torch.zeros_like(candidates, dtype=torch.bool)
    accidental_hit[:, 1:] = candidates[:, 1:] == labels[:, None]
    corrected = corrected.masked_fill(accidental_hit, float("-inf"))
    return -torch.log_softmax(corrected, dim=1)[:, 0]


def top_k_mass(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``top_k`` highest scores per row and the softmax mass renormalised over them.

    ``q = softmax(z_topk)`` is the model's probability restricted to its own top-k list (equal to
    ``p_topk / sum(p_topk)``); the selection is piecewise constant, the mass is differentiable.
    """
    values, indices = torch.topk(logits, top_k, dim=1)
    return indices, torch.softmax(values, dim=1)


def diversity_penalty(mass: Tensor, indices: Tensor, item_embeddings: Tensor) -> Tensor:
    """Per-row ``sum_a sum_b q_a q_b cos(e_a, e_b) = ||sum_a q_a e_a / ||e_a||| |^2`` over the top-k items.

    The expected cosine similarity of two independent draws from the top-k mass, i.e. 1 minus Rao's quadratic
    entropy with distance ``1 - cos`` (Rao 1982); in [0, 1], smallest when the mass spreads over dissimilar items.
    """
    unit = F.normalize(item_embeddings[indices].to(mass.dtype), dim=-1)
    mean_embedding = (mass.unsqueeze(-1) * unit).sum(dim=1)
    return (mean_embedding * mean_embedding).sum(dim=-1)


def popularity_penalty(mass: Tensor, indices: Tensor, popularity: Tensor) -> Tensor:
    """Per-row ``sum_a q_a * pi_a``: the expected normalised popularity (count / max count) of the top-k mass."""
    return (mass * popularity.to(mass.dtype)[indices]).sum(dim=1)


# ---------------------------------------------------------------------------------------------- module
@register_loss("relevance_diversity", aliases=("recommendation",))
class RelevanceDiversityLoss(LogitsLoss):
    r"""Relevance (softmax CE on the true item) traded against diversity and popularity of the top-k mass.

    For a row with scores ``z`` over ``V`` items and true item ``y``:

    * relevance ``R = -log softmax(z)_y``; with ``sampled_negatives = M > 0``, the sampled softmax over
      ``[y, n_1..n_M]`` (``n_m ~ Q``, shared by the batch, accidental hits masked) with logQ-corrected scores
      ``z_j - log Q_j`` -- ``Q`` uniform, or ``Q_j ∝ count_j + 1`` for ``negative_sampling="popularity"``;
    * ``T`` = the ``top_k`` highest-scoring items, ``q = softmax(z_T)`` the mass on them;
    * diversity ``D = sum_{a,b in T} q_a q_b cos(e_a, e_b) = ||sum_a q_a e_a/||e_a|| ||^2`` with item embeddings
      ``e`` (fixed: the gradient reaches the scores, not the embeddings);
    * popularity ``P = sum_{a in T} q_a * count_a / max(count)``;
    * loss ``= w_R R + w_D D + w_P P`` averaged over labelled rows, with the weights fixed, scheduled
      (``schedules={"diversity": {...}}``) or learned (``weighting="uncertainty"`` / ``"dwa"``), see
      :mod:`hf_losses.losses.weighting`.

    With ``diversity_weight=0`` and ``popularity_weight=0`` (fixed weighting) only ``R`` is computed and the loss
    equals ``F.cross_entropy`` exactly. Item embeddings are given at construction (``item_embeddings``, a
    ``(V, D)`` tensor or nested list, e.g. genre vectors) or later with :meth:`set_item_embeddings` -- passing the
    model's output embedding matrix keeps a live view of it (no copy, no gradient). Item counts (training-set
    interactions per item) go in ``item_popularity`` or :meth:`set_item_popularity`.

    ``last_components`` holds each unweighted term of the latest call, reduced like the loss (sum over this call's
    rows / ``num_items_in_batch``, or the mean without it): summed over an accumulation window they give the step's
    mean, which is how ``LossTrainer`` logs ``loss/relevance``, ``loss/diversity``, ``loss/popularity``.

    With fixed (or scheduled) weights the loss is a per-row sum, so ``reduction="none"`` (one loss per row, 0 at
    ignored rows), ``reduction="sum"``, ``normalize="weight"`` and ``sample_weight`` work as for every
    decomposable loss; learned weightings (``"uncertainty"``, ``"dwa"``) add once-per-step terms and refuse them.
    """

    summary = "Next-item softmax CE (optionally sampled, logQ-corrected) + top-k diversity and popularity penalties."
    reference = (
        "Rao 1982 (quadratic entropy); Yi et al. 2019 (logQ correction); Kendall et al. 2018; Liu et al. 2019 (DWA)"
    )

    def __init__(
        self,
        diversity_weight: float = 0.1,
        popularity_weight: float = 0.0,
        relevance_weight: float = 1.0,
        top_k: int = 10,
        item_embeddings: Sequence[Sequence[float]] | Tensor | None = None,
        item_popularity: Sequence[float] | Tensor | None = None,
        sampled_negatives: int = 0,
        negative_sampling: Literal["uniform", "popularity"] = "uniform",
        schedules: Mapping[str, Any] | None = None,
        weighting: Weighting = "fixed",
        temperature: float = 2.0,
        dwa_period_steps: int = 100,
        initial_log_variance: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: Reduction = "mean",
        normalize: Normalize = "count",
    ) -> None:
        super().__init__(ignore_index, reduction=reduction, normalize=normalize)
        owner = self._label()
        weights = {
            "relevance": check_number(owner, "relevance_weight", relevance_weight),
            "diversity": check_number(owner, "diversity_weight", diversity_weight),
            "popularity": check_number(owner, "popularity_weight", popularity_weight),
        }
        self.top_k = check_int(owner, "top_k", top_k, minimum=1)
        self.sampled_negatives = check_int(owner, "sampled_negatives", sampled_negatives, minimum=0)
        self.negative_sampling = check_choice(owner, "negative_sampling", negative_sampling, ("uniform", "popularity"))
        self.weighting = ComponentWeighting(
            owner,
            COMPONENTS,
            weights,
            schedules,
            weighting,
            temperature,
            dwa_period_steps,
            initial_log_variance,
            weight_parameters={name: f"{name}_weight" for name in COMPONENTS},
        )
        if weighting != "fixed" and (self.reduction != "mean" or self.normalize != "count"):
            option = "reduction" if self.reduction != "mean" else "normalize"
            raise ValueError(
                f"{owner}: `{option}={getattr(self, option)!r}` needs per-row losses, which weighting={weighting!r} "
                f"does not give (it adds once-per-step terms); use weighting='fixed' (schedules allowed)."
            )
        penalised = [name for name in ("diversity", "popularity") if self.weighting.is_active(name)]
        if self.top_k < 2 and penalised:
            raise ValueError(
                f"{owner}: `top_k` must be >= 2 when {' and '.join(f'`{n}_weight`' for n in penalised)} > 0, got "
                f"{self.top_k}: the mass over one item is 1, so the penalty would be a constant with zero gradient."
            )
        # configuration, not state: kept out of state_dict so a resumed loss built from loss_kwargs loads cleanly
        self.register_buffer("item_embeddings", None, persistent=False)
        self.register_buffer("item_popularity", None, persistent=False)
        if item_embeddings is not None:
            self.set_item_embeddings(item_embeddings)
        if item_popularity is not None:
            self.set_item_popularity(item_popularity)
        self.last_components: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------------ configuration
    def set_item_embeddings(self, embeddings: Sequence[Sequence[float]] | Tensor) -> None:
        """Item embeddings ``(V, D)`` for the diversity term; a tensor is kept as a detached view (no copy)."""
        owner = self._label()
        if isinstance(embeddings, Tensor):
            embeddings = embeddings.detach()
            if not embeddings.is_floating_point():
                embeddings = embeddings.float()
        else:
            try:
                embeddings = torch.tensor(embeddings, dtype=torch.float32)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"{owner}: `item_embeddings` must be a (V, D) tensor or nested list of numbers; {error}"
                ) from None
        if embeddings.dim() != 2 or embeddings.numel() == 0:
            raise ValueError(
                f"{owner}: `item_embeddings` must be 2-D (V items, D dims), got shape {tuple(embeddings.shape)}."
            )
        check_finite(owner, "item_embeddings", embeddings)  # once, when set: a NaN row would make every loss NaN
        self.item_embeddings = embeddings

    def set_item_popularity(self, counts: Sequence[float] | Tensor) -> None:
        """Interaction count per item ``(V,)`` (>= 0), for the popularity penalty and popularity sampling."""
        self.item_popularity = as_vector(self._label(), "item_popularity", counts, minimum=0.0)

    # ------------------------------------------------------------------------------------------ weights/state
    def set_step(self, step: int) -> None:
        """Optimizer step driving schedules and DWA (LossTrainer calls this before every forward)."""
        self.weighting.set_step(step)

    def component_weights(self) -> dict[str, float]:
        """Current effective weight of each active component (logged as ``loss_weight/<name>``)."""
        weights = self.weighting.effective_weights()
        return {name: weight for name, weight in weights.items() if self.weighting.is_active(name)}

    # ------------------------------------------------------------------------------------------ contract
    def check_inputs(self, logits: Tensor, labels: Tensor) -> None:
        super().check_inputs(logits, labels)
        owner = self._label()
        if logits.dim() != 2:
            raise ValueError(
                f"{owner}: `logits` must be (N, num_items) scores, got shape {tuple(logits.shape)}; "
                f"flatten sequence positions first."
            )
        num_items = logits.shape[1]
        if self.top_k > num_items:
            raise ValueError(f"{owner}: `top_k`={self.top_k} exceeds the catalogue size {num_items}.")
        if self.sampled_negatives and self.sampled_negatives >= num_items:
            raise ValueError(
                f"{owner}: `sampled_negatives`={self.sampled_negatives} must be below the catalogue size {num_items}."
            )
        for name, table, needed in (
            ("item_embeddings", self.item_embeddings, self.weighting.is_active("diversity")),
            (
                "item_popularity",
                self.item_popularity,
                self.weighting.is_active("popularity")
                or (self.sampled_negatives > 0 and self.negative_sampling == "popularity"),
            ),
        ):
            if needed and table is None:
                setter = "set_" + name
                raise ValueError(
                    f"{owner}: this configuration needs `{name}`; pass {name}=... at construction "
                    f"or call loss.{setter}(...)."
                )
            if needed and table.shape[0] != num_items:
                raise ValueError(f"{owner}: `{name}` has {table.shape[0]} rows but the logits score {num_items} items.")

    def component_terms(self, logits: Tensor, labels: Tensor, per_row: bool = False) -> dict[str, Tensor]:
        """Each active component: its sum over labelled rows, or (``per_row``) its value per row, 0 at ignored rows."""
        valid = self.valid_mask(labels)
        terms: dict[str, Tensor] = {}
        if self.weighting.is_active("relevance") and not self.sampled_negatives:
            # on the full batch with ignore_index: bit-for-bit F.cross_entropy's mean after the division by count
            terms["relevance"] = F.cross_entropy(
                logits, labels, ignore_index=self.ignore_index, reduction="none" if per_row else "sum"
            )
        # the other terms are computed on every row and masked (no copy of the (N, V) scores, no device sync)
        zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
        rows: dict[str, Tensor] = {}
        if self.weighting.is_active("relevance") and self.sampled_negatives:
            log_q = self._log_sampling_probabilities(logits.shape[1], logits.device)
            negatives = torch.multinomial(log_q.exp(), self.sampled_negatives, replacement=True)
            rows["relevance"] = sampled_softmax_cross_entropy(logits, labels.masked_fill(~valid, 0), negatives, log_q)
        if self.weighting.is_active("diversity") or self.weighting.is_active("popularity"):
            indices, mass = top_k_mass(logits, self.top_k)
            if self.weighting.is_active("diversity"):
                rows["diversity"] = diversity_penalty(mass, indices, self.item_embeddings.to(logits.device))
            if self.weighting.is_active("popularity"):
                popularity = self.item_popularity.to(logits.device)
                rows["popularity"] = popularity_penalty(mass, indices, popularity / popularity.max())
        for name, values in rows.items():
            masked = torch.where(valid, values, zero)
            terms[name] = masked if per_row else masked.sum()
        return terms

    def component_sums(self, logits: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Sum over labelled rows of each active component, and the number of labelled rows."""
        return self.component_terms(logits, labels), self.valid_mask(labels).sum()

    def loss_sum(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        sums, count = self.component_sums(logits, labels)
        return self.weighting.combine(sums, {name: count for name in sums}), count

    def loss_items(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The weighted sum of the components per row (0 at ignored rows); fixed or scheduled weights only."""
        self._check_per_row("per-row losses")
        terms = self.component_terms(logits, labels, per_row=True)
        return self.weighting.combine(terms, {name: 1.0 for name in terms})

    def forward(
        self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems = None, sample_weight: Tensor | None = None
    ) -> Tensor:
        """The loss; ``sample_weight`` (one weight per row ``(N,)``) multiplies each row's loss (fixed weights)."""
        labels = index_labels(labels)
        self.check_inputs(logits, labels)
        owner = self._label()
        if sample_weight is not None or self.reduction != "mean" or self.normalize != "count":
            self._check_per_row("data weights (`sample_weight`)")
            with float32_region(logits.device.type):
                return self._reduce_rows(logits.to(compute_dtype(logits)), labels, num_items_in_batch, sample_weight)
        with float32_region(logits.device.type):
            sums, count = self.component_sums(logits.to(compute_dtype(logits)), labels)
            values = {
                name: reduce_by_items(total, count, num_items_in_batch, self.item_unit, owner)
                for name, total in sums.items()
            }
            fraction = item_fraction(count, select_num_items(num_items_in_batch, self.item_unit, owner))
            self.last_components = {name: value.detach() for name, value in values.items()}
            return self.weighting.combine(values, {name: fraction for name in values})

    def _check_per_row(self, what: str) -> None:
        if self.weighting.weighting != "fixed":
            raise ValueError(
                f"{self._label()}: {what} need fixed (or scheduled) component weights; weighting="
                f"{self.weighting.weighting!r} adds once-per-step terms that have no per-row value."
            )

    def _reduce_rows(
        self, logits: Tensor, labels: Tensor, num_items_in_batch: NumItems, sample_weight: Tensor | None
    ) -> Tensor:
        """The per-row path (data weights, ``reduction`` "none"/"sum", ``normalize="weight"``); each component is
        reduced like the loss into ``last_components`` (per row for ``reduction="none"``)."""
        owner = self._label()
        terms = self.component_terms(logits, labels, per_row=True)
        weights = None
        if sample_weight is not None:
            weights = expand_sample_weight(owner, sample_weight, labels).to(logits.dtype)
            terms = {name: values * weights for name, values in terms.items()}
        if self.reduction == "none":
            values = terms
        elif self.reduction == "sum":
            values = {name: rows.sum() for name, rows in terms.items()}
        else:
            if self.normalize == "weight":
                local = self.item_weights(labels).to(logits.dtype)
                local = (local if weights is None else local * weights).sum()
            else:
                local = self.valid_mask(labels).sum()
            values = {
                name: reduce_by_items(rows.sum(), local, num_items_in_batch, self.count_unit, owner)
                for name, rows in terms.items()
            }
        self.last_components = {name: value.detach() for name, value in values.items()}
        return self.weighting.combine(values, {name: 1.0 for name in values})

    def extra_repr(self) -> str:
        weights = ", ".join(f"{n}_weight={w:g}" for n, w in self.weighting.static_weights.items())
        return f"{weights}, top_k={self.top_k}, sampled_negatives={self.sampled_negatives}, {super().extra_repr()}"

    def _log_sampling_probabilities(self, num_items: int, device: torch.device) -> Tensor:
        if self.negative_sampling == "popularity":
            counts = self.item_popularity.to(device=device, dtype=torch.float32) + 1.0
            return torch.log(counts / counts.sum())
        return torch.full((num_items,), -torch.log(torch.tensor(float(num_items))).item(), device=device)
