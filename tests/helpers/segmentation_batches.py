"""Inputs shared by the segmentation-loss tests (test_segmentation.py, test_lovasz.py)."""

import torch

OVERLAP_LOSSES = ["dice", "generalized_dice", "tversky", "focal_tversky"]
ALL_LOSSES = OVERLAP_LOSSES + ["lovasz", "mcc"]


def make_batch(n=3, c=4, spatial=(5, 6), seed=0, ignore_fraction=0.0, dtype=torch.float32, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, *spatial, generator=generator, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, max(c, 2), (n, *spatial), generator=generator)
    if ignore_fraction:
        labels[torch.rand(labels.shape, generator=generator) < ignore_fraction] = -100
    return logits, labels


def probabilities(logits):
    """Softmax over the classes, or the sigmoid of one binary channel."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


# Binary: sigmoid probabilities 0.9, 0.2, 0.6, 0.1 for labels 1, 0, 1, 0: TP = 1.5, |P| = 1.8, |G| = 2,
# FP = 0.3, FN = 0.5. Lovasz: errors 0.1, 0.2, 0.4, 0.1 sorted 0.4 (fg), 0.2, 0.1, 0.1 -> weights 1/2, 1/6, 1/3, 0.
BINARY_PROBS = [0.9, 0.2, 0.6, 0.1]
BINARY_LABELS = [1, 0, 1, 0]
# Three classes, two pixels: probabilities (0.7, 0.2, 0.1) with label 0 and (0.1, 0.6, 0.3) with label 2:
# TP = (0.7, 0, 0.3), |P| = (0.8, 0.8, 0.4), |G| = (1, 0, 1).
MULTI_PROBS = [[0.7, 0.1], [0.2, 0.6], [0.1, 0.3]]
MULTI_LABELS = [0, 2]


def hand_case_inputs(binary):
    """Logits (1, C, P) and labels (1, P) of the binary or the three-class hand-computed case."""
    if binary:
        probs = torch.tensor(BINARY_PROBS, dtype=torch.float64)
        return torch.log(probs / (1 - probs)).reshape(1, 1, 4), torch.tensor([BINARY_LABELS])
    return torch.log(torch.tensor(MULTI_PROBS, dtype=torch.float64)).unsqueeze(0), torch.tensor([MULTI_LABELS])
