"""Contrastive losses with in-batch negatives: InfoNCE (van den Oord et al. 2018), symmetric as in CLIP.

Call form (an :class:`~hf_losses.losses.base.EmbeddingPairLoss`): ``loss(query_embeddings, key_embeddings)``, two
``(N, D)`` matrices; row ``i`` of each is a positive pair and the other keys of the batch are the negatives. Under
``torch.distributed`` the keys (and, for the symmetric loss, the queries) of *every* process are the negatives:
they are gathered with gradient (:func:`hf_losses.distributed.all_gather_with_grad`), so 2 processes x 4 pairs
give the loss and the gradients of 1 process x 8 pairs.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from hf_losses.distributed import all_gather_with_grad, all_reduce_sum_with_grad, process_sizes, rank
from hf_losses.losses.base import EmbeddingPairLoss
from hf_losses.losses.checks import check_bool, check_number
from hf_losses.registry import register_loss


def info_nce_sum(
    queries: Tensor,
    keys: Tensor,
    all_queries: Tensor,
    all_keys: Tensor,
    offset: int,
    temperature: float,
    symmetric: bool,
) -> Tensor:
    """Sum over the local pairs of ``-log softmax(q_i . K^T / t)[offset + i]`` (halved sum of both directions
    when ``symmetric``). ``all_*`` hold every process's rows; the local rows start at ``offset`` in them."""
    targets = torch.arange(queries.shape[0], device=queries.device) + offset
    total = F.cross_entropy(queries @ all_keys.t() / temperature, targets, reduction="sum")
    if symmetric:
        total = 0.5 * (total + F.cross_entropy(keys @ all_queries.t() / temperature, targets, reduction="sum"))
    return total


def info_nce(
    queries: Tensor, keys: Tensor, temperature: float = 0.07, symmetric: bool = False, normalize: bool = True
) -> Tensor:
    """InfoNCE of one (single-process) batch: the mean over pairs of the cross-entropy of picking the true key
    among all keys, ``-log(exp(q_i.k_i / t) / sum_j exp(q_i.k_j / t))``; ``symmetric`` averages it with the
    key-to-query direction (CLIP). ``normalize``: cosine similarities (L2-normalized embeddings)."""
    if normalize:
        queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    total = info_nce_sum(queries, keys, queries, keys, 0, temperature, symmetric)
    return total / max(queries.shape[0], 1)


@register_loss("info_nce", aliases=("infonce",))
class InfoNCELoss(EmbeddingPairLoss):
    """InfoNCE with in-batch negatives, temperature and the symmetric (CLIP) option, exact across processes.

    Call ``loss(query_embeddings, key_embeddings)`` with two float tensors ``(N, D)`` whose row ``i`` is a
    positive pair. The value is the mean over all ``N_global`` pairs of the whole (all-process) batch; every
    process returns the same value. A batch loss (``decomposable = False``): it ignores ``num_items_in_batch``,
    and each gradient-accumulation micro-batch is its own set of negatives.

    Args:
        temperature: softmax temperature ``t`` (> 0); logits are ``similarity / t``. 0.07 as in MoCo / CLIP's
            initial value.
        symmetric: average the query->key and key->query losses (CLIP); False (default): query->key only, as
            in the InfoNCE paper, MoCo and sentence-transformers' MultipleNegativesRankingLoss.
        normalize: L2-normalize the embeddings first (cosine similarity), as in CLIP and SimCLR.
        across_processes: use the keys of every process as negatives (gathered with gradient) when
            ``torch.distributed`` is initialized; False: the local batch only.
    """

    summary = "InfoNCE / CLIP contrastive loss with in-batch negatives gathered across processes."
    reference = "van den Oord et al. 2018 (arXiv:1807.03748); symmetric: Radford et al. 2021, CLIP"
    item_unit = "sample"
    decomposable = False

    def __init__(
        self, temperature: float = 0.07, symmetric: bool = False, normalize: bool = True, across_processes: bool = True
    ) -> None:
        super().__init__()
        owner = self._label()
        self.temperature = check_number(owner, "temperature", temperature, minimum=0.0, strict=True)
        self.symmetric = check_bool(owner, "symmetric", symmetric)
        # not `self.normalize`: that is the base class's reduction denominator ("count" / "weight")
        self.normalize_embeddings = check_bool(owner, "normalize", normalize)
        self.across_processes = check_bool(owner, "across_processes", across_processes)

    def loss_sum(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        if self.normalize_embeddings:
            queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
        if self.across_processes:
            sizes = process_sizes(queries.shape[0], queries.device)
            all_keys = all_gather_with_grad(keys, sizes)
            all_queries = all_gather_with_grad(queries, sizes) if self.symmetric else queries
            offset = sum(sizes[: rank()]) if len(sizes) > 1 else 0
        else:
            sizes, all_keys, all_queries, offset = [queries.shape[0]], keys, queries, 0
        total = info_nce_sum(queries, keys, all_queries, all_keys, offset, self.temperature, self.symmetric)
        if self.across_processes:
            total = all_reduce_sum_with_grad(total)
        count = sum(sizes)
        if count == 1:
            warnings.warn(
                f"{self._label()}: the batch holds 1 pair, so there is no in-batch negative: the loss is 0 with zero "
                f"gradient. Use batches of >= 2 pairs (e.g. drop_last=True in the DataLoader).",
                RuntimeWarning,
                stacklevel=2,
            )
        return total / max(count, 1), count

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:g}, symmetric={self.symmetric}, normalize={self.normalize_embeddings}, "
            f"across_processes={self.across_processes}"
        )
