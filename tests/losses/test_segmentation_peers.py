"""Peer parity of the segmentation losses: MONAI's and smp's own test tables mapped onto our parameters, a
randomized comparison with the installed MONAI (values and gradients), and smp's formulas (smp is not installed
here: its DiceLoss / JaccardLoss / TverskyLoss / MCCLoss forward is re-implemented below from its source).

Mapping, MONAI -> ours: ``softmax=True, to_onehot_y=True`` -> the default (integer labels); ``sigmoid=True`` with
C-channel targets -> ``multilabel=True``; no activation -> ``from_logits=False``; ``other_act=f`` -> ours on
``f(logits)`` with ``from_logits=False`` when ``f`` gives probabilities, refused otherwise (``tanh``,
``log_softmax``); ``batch`` -> ``not per_image``; ``weight=w`` -> ``class_weights=w`` times ``sum(w) / C``;
``reduction="none"`` (per image and class) -> our ``(N,)`` per-image losses are its class means; ``"sum"`` (over
images and classes) -> our ``"sum"`` (over images) times the number of classes.

Mapping, smp -> ours: ``per_image=False`` (smp pools the batch); Dice / Jaccard ``smooth=s`` -> ``smooth=2 s`` (smp
writes ``(TP + s) / ((|P| + |G|) / 2 + s)``); ``mode="multilabel"`` -> ``multilabel=True, soft_label=True`` (smp's
intersection is the soft-label form); ``mode="binary"`` -> one channel; ``TverskyLoss(gamma)`` -> ``focal_tversky``
for one class (smp raises the class mean to gamma, we each class's loss).
"""

import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as MonaiDice
from monai.losses import GeneralizedDiceLoss as MonaiGeneralizedDice
from monai.losses import TverskyLoss as MonaiTversky

from hf_losses import get_loss


def tensor(values):
    return torch.tensor(values, dtype=torch.float32)


def log_softmax(x):
    return torch.log_softmax(x, dim=1)


# ================================================================================================ MONAI's tables
# The inputs of MONAI's tests/losses/test_dice_loss.py, test_generalized_dice_loss.py, test_tversky_loss.py.
X1 = [[[[1.0, -1.0], [-1.0, 1.0]]]]
T1 = [[[[1.0, 0.0], [1.0, 1.0]]]]
X2 = [[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
T2 = [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]]
X2B = [[[[1.0, -0.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
SOFT = [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]]
P3 = [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
Y3 = [[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]
Z3 = [[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]
L3 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
Y3B = [[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]]
W_IN = [[[0.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]]
W_T = [[[1, 1, 0, 0]]]

SIGMOID = {"multilabel": True}  # MONAI sigmoid=True, C-channel float targets
NO_ACT = {"from_logits": False}  # MONAI without an activation: the input holds probabilities


def s(value):
    return {"smooth_nr": value, "smooth_dr": value}


# (id, MONAI class, MONAI kwargs, input, target, MONAI's expected value,
#  our loss, our kwargs, labels as ("float" | "index" | "onehot"), compare ("value" | "none" | ("sum", factor) |
#  "refused"))
MONAI_TABLE = [
    # ---------------------------------------------------------------------------------------- test_dice_loss.py
    ("dice-0", MonaiDice, {"sigmoid": True, **s(1e-6)}, X1, T1, 0.307576, "dice", {**SIGMOID, **s(1e-6)}, "float",
     "value"),
    ("dice-1", MonaiDice, {"sigmoid": True, **s(1e-4)}, X2, T2, 0.416657, "dice", {**SIGMOID, **s(1e-4)}, "float",
     "value"),
    ("dice-2", MonaiDice, {"soft_label": True, **s(1e-4)}, SOFT, SOFT, 0.0, "dice",
     {**SIGMOID, **NO_ACT, "soft_label": True, **s(1e-4)}, "float", "value"),
    ("dice-3", MonaiDice, {"soft_label": False, **s(1e-4)}, SOFT, SOFT, 0.307773, "dice",
     {**SIGMOID, **NO_ACT, **s(1e-4)}, "float", "value"),
    ("dice-4", MonaiDice, {"include_background": False, "to_onehot_y": True, **s(0)}, P3, Y3, 0.0, "dice",
     {"include_background": False, **NO_ACT, **s(0)}, "index", "value"),
    ("dice-5", MonaiDice, {"to_onehot_y": True, "sigmoid": True, **s(1e-4)}, L3, Y3B, 0.435050, "dice",
     {**SIGMOID, **s(1e-4)}, "onehot", "value"),
    ("dice-6", MonaiDice, {"to_onehot_y": True, "sigmoid": True, "reduction": "none", **s(1e-4)}, L3, Y3B,
     [[[0.296529], [0.415136]], [[0.599976], [0.428559]]], "dice", {**SIGMOID, **s(1e-4)}, "onehot", "none"),
    ("dice-7", MonaiDice, {"to_onehot_y": True, "softmax": True, **s(1e-4)}, L3, Y3B, 0.383713, "dice", s(1e-4),
     "index", "value"),
    ("dice-8", MonaiDice, {"to_onehot_y": True, "softmax": True, "reduction": "sum", **s(1e-4)}, L3, Y3B, 1.534853,
     "dice", s(1e-4), "index", ("sum", 2)),
    ("dice-9", MonaiDice, {"sigmoid": True, **s(1e-6)}, X1, T1, 0.307576, "dice", {**SIGMOID, **s(1e-6)}, "float",
     "value"),
    ("dice-10", MonaiDice, {"sigmoid": True, "squared_pred": True}, X1, T1, 0.178337, "dice",
     {**SIGMOID, "squared_pred": True}, "float", "value"),
    ("dice-11", MonaiDice, {"sigmoid": True, "jaccard": True}, X1, T1, 0.470451, "dice", {**SIGMOID, "jaccard": True},
     "float", "value"),
    ("dice-12", MonaiDice, {"other_act": torch.tanh, **s(1e-4)}, X2, T2, 0.999963, "dice", {**SIGMOID, **s(1e-4)},
     "float", "refused"),
    ("dice-13", MonaiDice, {"to_onehot_y": True, "other_act": log_softmax, **s(1e-4)}, L3, Y3B, -8.522593, "dice",
     s(1e-4), "index", "refused"),
    ("dice-14", MonaiDice, {"other_act": torch.tanh, "batch": True, **s(1e-4)}, X2B, T2, 0.774718, "dice",
     {**SIGMOID, "per_image": False, **s(1e-4)}, "float", "refused"),
    ("dice-15", MonaiDice, {"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": True}, X2B, T2,
     0.774733, "dice", {**SIGMOID, "per_image": False, "smooth_nr": 0, "smooth_dr": 1e-4}, "float", "refused"),
    ("dice-16", MonaiDice, {"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": False}, X2B, T2,
     0.840058, "dice", {**SIGMOID, "smooth_nr": 0, "smooth_dr": 1e-4}, "float", "refused"),
    ("dice-17", MonaiDice, {"to_onehot_y": True, "other_act": log_softmax, **s(1e-4), "weight": (0, 1)}, L3, Y3B,
     -8.268515, "dice", {**s(1e-4), "class_weights": [0, 1]}, "index", "refused"),
    # ---------------------------------------------------------------------------- test_generalized_dice_loss.py
    ("gdl-0", MonaiGeneralizedDice, {"sigmoid": True, **s(1e-6)}, X1, T1, 0.307576, "generalized_dice",
     {**SIGMOID, **s(1e-6)}, "float", "value"),
    ("gdl-1", MonaiGeneralizedDice, {"sigmoid": True, **s(1e-4)}, X2, T2, 0.416597, "generalized_dice",
     {**SIGMOID, **s(1e-4)}, "float", "value"),
    ("gdl-2", MonaiGeneralizedDice, {"soft_label": True, **s(1e-4)}, SOFT, SOFT, 0.0, "generalized_dice",
     {**SIGMOID, **NO_ACT, "soft_label": True, **s(1e-4)}, "float", "value"),
    ("gdl-3", MonaiGeneralizedDice, {"soft_label": False, **s(1e-4)}, SOFT, SOFT, 0.307748, "generalized_dice",
     {**SIGMOID, **NO_ACT, **s(1e-4)}, "float", "value"),
    ("gdl-4", MonaiGeneralizedDice, {"include_background": False, "to_onehot_y": True, **s(0)}, P3, Y3, 0.0,
     "generalized_dice", {"include_background": False, **NO_ACT, **s(0)}, "index", "value"),
    ("gdl-5", MonaiGeneralizedDice, {"to_onehot_y": True, "sigmoid": True, **s(1e-4)}, L3, Y3B, 0.469964,
     "generalized_dice", {**SIGMOID, **s(1e-4)}, "onehot", "value"),
    ("gdl-6", MonaiGeneralizedDice, {"to_onehot_y": True, "softmax": True, **s(1e-4)}, L3, Y3B, 0.414507,
     "generalized_dice", s(1e-4), "index", "value"),
    ("gdl-7", MonaiGeneralizedDice, {"to_onehot_y": True, "softmax": True, "reduction": "sum", **s(1e-4)}, L3, Y3B,
     0.829015, "generalized_dice", s(1e-4), "index", ("sum", 1)),
    ("gdl-8", MonaiGeneralizedDice, {"to_onehot_y": True, "softmax": True, "reduction": "none", **s(1e-4)}, L3, Y3B,
     [[[0.273476]], [[0.555539]]], "generalized_dice", s(1e-4), "index", "none"),
    ("gdl-9", MonaiGeneralizedDice, {"include_background": False, "to_onehot_y": True, **s(1e-8)}, P3, Z3, 0.0,
     "generalized_dice", {"include_background": False, **NO_ACT, **s(1e-8)}, "index", "value"),
    ("gdl-10", MonaiGeneralizedDice, {"sigmoid": True, **s(1e-6)}, X1, T1, 0.307576, "generalized_dice",
     {**SIGMOID, **s(1e-6)}, "float", "value"),
    ("gdl-11", MonaiGeneralizedDice, {"to_onehot_y": True, "softmax": True, "w_type": "simple", **s(0)}, W_IN, W_T,
     0.250023, "generalized_dice", {"w_type": "simple", **s(0)}, "index", "value"),
    ("gdl-12", MonaiGeneralizedDice, {"other_act": torch.tanh, **s(1e-4)}, X2, T2, 0.99970, "generalized_dice",
     {**SIGMOID, **s(1e-4)}, "float", "refused"),
    ("gdl-13", MonaiGeneralizedDice, {"to_onehot_y": True, "other_act": log_softmax, **s(1e-4)}, L3, Y3B, -0.097833,
     "generalized_dice", s(1e-4), "index", "refused"),
    # ------------------------------------------------------------------------------------ test_tversky_loss.py
    ("tversky-0", MonaiTversky, {"sigmoid": True, **s(1e-6)}, X1, T1, 0.307576, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **s(1e-6)}, "float", "value"),
    ("tversky-1", MonaiTversky, {"sigmoid": True, **s(1e-4)}, X2, T2, 0.416657, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **s(1e-4)}, "float", "value"),
    ("tversky-2", MonaiTversky, {"soft_label": True, **s(1e-4)}, SOFT, SOFT, 0.0, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **NO_ACT, "soft_label": True, **s(1e-4)}, "float", "value"),
    ("tversky-3", MonaiTversky, {"soft_label": False, **s(1e-4)}, SOFT, SOFT, 0.307773, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **NO_ACT, **s(1e-4)}, "float", "value"),
    ("tversky-4", MonaiTversky, {"include_background": False, "to_onehot_y": True, **s(0)}, P3, Y3, 0.0, "tversky",
     {"alpha": 0.5, "beta": 0.5, "include_background": False, **NO_ACT, **s(0)}, "index", "value"),
    ("tversky-5", MonaiTversky, {"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 1e-3},
     P3, Y3, 0.000999, "tversky",
     {"alpha": 0.5, "beta": 0.5, "include_background": False, **NO_ACT, "smooth_nr": 0, "smooth_dr": 1e-3}, "index",
     "value"),
    ("tversky-6", MonaiTversky, {"to_onehot_y": True, "sigmoid": True, **s(1e-4)}, L3, Y3B, 0.435050, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **s(1e-4)}, "onehot", "value"),
    ("tversky-7", MonaiTversky, {"to_onehot_y": True, "sigmoid": True, "batch": True}, L3, Y3B, 0.422979, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, "per_image": False}, "onehot", "value"),
    ("tversky-8", MonaiTversky, {"to_onehot_y": True, "sigmoid": True, "reduction": "sum", **s(1e-4)}, L3, Y3B,
     1.74013, "tversky", {"alpha": 0.5, "beta": 0.5, **SIGMOID, **s(1e-4)}, "onehot", ("sum", 2)),
    ("tversky-9", MonaiTversky, {"to_onehot_y": True, "softmax": True, **s(1e-4)}, L3, Y3B, 0.383713, "tversky",
     {"alpha": 0.5, "beta": 0.5, **s(1e-4)}, "index", "value"),
    ("tversky-10", MonaiTversky, {"to_onehot_y": True, "softmax": True, "reduction": "none", **s(1e-4)}, L3, Y3B,
     [[0.210961, 0.295339], [0.599952, 0.428547]], "tversky", {"alpha": 0.5, "beta": 0.5, **s(1e-4)}, "index",
     "none"),
    ("tversky-11", MonaiTversky, {"sigmoid": True, "alpha": 0.3, "beta": 0.7, **s(1e-6)}, X1, T1, 0.3589, "tversky",
     {"alpha": 0.3, "beta": 0.7, **SIGMOID, **s(1e-6)}, "float", "value"),
    ("tversky-12", MonaiTversky, {"sigmoid": True, "alpha": 0.7, "beta": 0.3, **s(1e-6)}, X1, T1, 0.247366, "tversky",
     {"alpha": 0.7, "beta": 0.3, **SIGMOID, **s(1e-6)}, "float", "value"),
    ("tversky-13", MonaiTversky, {"other_act": torch.tanh, **s(1e-4)}, X2, T2, 0.999963, "tversky",
     {"alpha": 0.5, "beta": 0.5, **SIGMOID, **s(1e-4)}, "float", "refused"),
    ("tversky-14", MonaiTversky, {"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-3, "batch": True}, X2, T2,
     0.999963, "tversky", {"alpha": 0.5, "beta": 0.5, **SIGMOID, "per_image": False, "smooth_nr": 0, "smooth_dr": 1e-3},
     "float", "refused"),
    ("tversky-15", MonaiTversky, {"to_onehot_y": True, "other_act": log_softmax, **s(1e-4)}, L3, Y3B, -8.533317,
     "tversky", {"alpha": 0.5, "beta": 0.5, **s(1e-4)}, "index", "refused"),
]  # fmt: skip


def our_labels(target, labels_as, num_classes):
    if labels_as == "float":
        return target
    index = target[:, 0].long()
    if labels_as == "index":
        return index
    return F.one_hot(index, num_classes).movedim(-1, 1).float()


@pytest.mark.parametrize("case", MONAI_TABLE, ids=[case[0] for case in MONAI_TABLE])
def test_monai_test_table(case):
    _, monai_class, monai_kwargs, inputs, target, expected, name, kwargs, labels_as, compare = case
    inputs, target, expected = tensor(inputs), tensor(target), tensor(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns that include_background is ignored for one channel
        monai_value = monai_class(**monai_kwargs)(inputs, target)
    torch.testing.assert_close(monai_value, expected.reshape(monai_value.shape), rtol=1e-4, atol=1e-6)  # transcribed
    labels = our_labels(target, labels_as, inputs.shape[1])
    if compare == "refused":  # other_act gives values outside [0, 1], which are no probabilities
        activation = monai_kwargs["other_act"]
        with pytest.raises(ValueError, match=rf"loss '{name}': `logits` must be probabilities \(from_logits=False\)"):
            get_loss(name, from_logits=False, **kwargs)(activation(inputs), labels)
        return
    if compare == "none":
        value = get_loss(name, reduction="none", **kwargs)(inputs, labels)
        expected = expected.reshape(expected.shape[0], -1).mean(1)  # our per-image loss is the class mean
    elif isinstance(compare, tuple):
        value = get_loss(name, reduction="sum", **kwargs)(inputs, labels) * compare[1]
    else:
        value = get_loss(name, **kwargs)(inputs, labels)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)


def test_monai_table_is_complete():
    """Every case of MONAI's three test tables is mapped (18 Dice, 14 generalized Dice, 16 Tversky)."""
    counts = {prefix: sum(case[0].startswith(prefix + "-") for case in MONAI_TABLE) for prefix in ("dice", "gdl")}
    counts["tversky"] = sum(case[0].startswith("tversky-") for case in MONAI_TABLE)
    assert counts == {"dice": 18, "gdl": 14, "tversky": 16}


# ================================================================================================ MONAI, randomized
def random_inputs(mode, n=3, c=3, spatial=(5, 4), seed=0):
    """(logits, our labels, MONAI target, MONAI activation kwargs, our mode kwargs) of one input mode."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c if mode != "binary" else 1, *spatial, generator=generator, dtype=torch.float64) * 2
    if mode in ("softmax", "binary", "other_act"):
        labels = torch.randint(0, max(c if mode != "binary" else 2, 2), (n, *spatial), generator=generator)
        monai = {"softmax": {"softmax": True, "to_onehot_y": True}, "binary": {"sigmoid": True}}.get(mode)
        if mode == "other_act":  # an activation MONAI applies and we are given the result of
            monai = {"other_act": lambda x: torch.softmax(x / 2, dim=1), "to_onehot_y": True}
            return logits, labels, labels.unsqueeze(1).double(), monai, {"from_logits": False}
        target = labels.unsqueeze(1).double()
        return logits, labels, target, monai, {}
    if mode == "multilabel":
        target = (torch.rand(logits.shape, generator=generator, dtype=torch.float64) < 0.4).double()
        return logits, target, target, {"sigmoid": True}, {"multilabel": True}
    if mode == "multilabel_soft":
        target = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
        return logits, target, target, {"sigmoid": True, "soft_label": True}, {"multilabel": True, "soft_label": True}
    # soft: softmax over classes, soft class-probability targets (MONAI soft_label with to_onehot_y=False)
    target = torch.softmax(torch.randn(logits.shape, generator=generator, dtype=torch.float64) * 2, dim=1)
    return logits, target, target, {"softmax": True, "soft_label": True}, {"soft_label": True}


MODES = ["softmax", "binary", "multilabel", "multilabel_soft", "other_act", "soft"]
DICE_OPTIONS = [
    ({}, {}),
    ({"squared_pred": True}, {"squared_pred": True}),
    ({"jaccard": True}, {"jaccard": True}),
    ({"squared_pred": True, "jaccard": True, "smooth": 0.5}, {"squared_pred": True, "jaccard": True, **s(0.5)}),
    ({"smooth_nr": 0.0, "smooth_dr": 1e-5}, {"smooth_nr": 0.0, "smooth_dr": 1e-5}),
    ({"smooth_nr": 0.3, "smooth_dr": 0.7}, {"smooth_nr": 0.3, "smooth_dr": 0.7}),
]
GDL_OPTIONS = [({"w_type": w}, {"w_type": w}) for w in ("square", "simple", "uniform")] + [
    (
        {"w_type": "simple", "smooth_nr": 0.0, "smooth_dr": 1e-3},
        {"w_type": "simple", "smooth_nr": 0.0, "smooth_dr": 1e-3},
    )
]
TVERSKY_OPTIONS = [
    ({"alpha": 0.3, "beta": 0.7}, {"alpha": 0.3, "beta": 0.7}),
    (
        {"alpha": 0.9, "beta": 0.2, "smooth_nr": 0.0, "smooth_dr": 0.1},
        {"alpha": 0.9, "beta": 0.2, "smooth_nr": 0.0, "smooth_dr": 0.1},
    ),
]
RANDOM_CASES = (
    [("dice", MonaiDice, ours, theirs) for ours, theirs in DICE_OPTIONS]
    + [("generalized_dice", MonaiGeneralizedDice, ours, theirs) for ours, theirs in GDL_OPTIONS]
    + [("tversky", MonaiTversky, ours, theirs) for ours, theirs in TVERSKY_OPTIONS]
)


def assert_equals_monai(name, kwargs, monai_class, monai_kwargs, mode, seed, compare_gradients=True):
    logits, labels, target, activation, mode_kwargs = random_inputs(mode, seed=seed)
    logits.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one channel: include_background / softmax ignored by MONAI
        expected = monai_class(**monai_kwargs, **activation)(logits, target)
    first = activation["other_act"](logits) if "other_act" in activation else logits
    value = get_loss(name, **kwargs, **mode_kwargs)(first, labels)
    # MONAI's to_onehot_y makes float32 targets: its squared sums are float32-accurate
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-9)
    if compare_gradients:
        (expected_grad,) = torch.autograd.grad(expected, logits)
        (grad,) = torch.autograd.grad(value, logits)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name,monai_class,kwargs,monai_kwargs", RANDOM_CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
def test_equals_installed_monai_randomized(
    name, monai_class, kwargs, monai_kwargs, mode, per_image, include_background
):
    seed = zlib.crc32(repr((name, mode, per_image, include_background, sorted(kwargs))).encode()) % 1000
    if mode == "multilabel_soft" and kwargs.get("squared_pred"):
        # MONAI accepts soft_label with squared_pred and ignores it (the squared form is exact for soft labels); we
        # refuse the option that has no effect
        logits, _, target, _, _ = random_inputs(mode, seed=seed)
        plain, soft = (MonaiDice(sigmoid=True, soft_label=flag, **monai_kwargs)(logits, target) for flag in (0, 1))
        torch.testing.assert_close(plain, soft)
        with pytest.raises(ValueError, match=r"loss 'dice': `soft_label=True` has no effect with squared_pred=True"):
            get_loss(name, multilabel=True, soft_label=True, **kwargs)
        return
    assert_equals_monai(
        name,
        {**kwargs, "per_image": per_image, "include_background": include_background},
        monai_class,
        {**monai_kwargs, "batch": not per_image, "include_background": include_background},
        mode,
        seed,
    )


@pytest.mark.parametrize("mode", ["softmax", "multilabel", "soft"])
@pytest.mark.parametrize("include_background", [True, False])
def test_class_weights_equal_monai_weight_times_mean_weight(mode, include_background):
    """MONAI's ``weight`` multiplies each class's loss and averages over C; ours is the normalised weighted mean."""
    weights = [0.5, 2.0, 1.0]
    kept = weights if include_background else weights[1:]
    logits, labels, target, activation, mode_kwargs = random_inputs(mode, seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = MonaiDice(weight=kept, include_background=include_background, **activation)(logits, target)
    ours = get_loss("dice", class_weights=weights, include_background=include_background, **mode_kwargs)
    torch.testing.assert_close(ours(logits, labels) * sum(kept) / len(kept), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name,monai_class,kwargs", [("dice", MonaiDice, {}), ("tversky", MonaiTversky, {"alpha": 0.2, "beta": 0.9})]
)
@pytest.mark.parametrize("per_image", [True, False])
def test_multilabel_with_ignored_pixels_equals_monai_on_masked_probabilities(name, monai_class, kwargs, per_image):
    """Entries equal to ``ignore_index`` count nowhere: MONAI given the probabilities and targets with those
    pixels zeroed (its own masking of ignored pixels) computes the same statistics."""
    logits, target, _, _, _ = random_inputs("multilabel", seed=31)
    ignored = torch.rand(target.shape[:1] + (1,) + target.shape[2:], generator=torch.Generator().manual_seed(3)) < 0.3
    value = get_loss(name, multilabel=True, per_image=per_image, **kwargs)(logits, target.masked_fill(ignored, -100.0))
    keep = (~ignored).double()
    expected = monai_class(batch=not per_image, **kwargs)(torch.sigmoid(logits) * keep, target * keep)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


# ================================================================================================ smp
# smp's losses (segmentation_models_pytorch/losses/{dice,jaccard,tversky,mcc}.py and _functional.py, 2025),
# written out: smp cannot be installed here.
def smp_soft_tversky_score(output, target, alpha, beta, smooth=0.0, eps=1e-7, dims=None):
    if dims is not None:
        output_sum, target_sum = output.sum(dim=dims), target.sum(dim=dims)
        difference = torch.linalg.vector_norm(output - target, ord=1, dim=dims)
    else:
        output_sum, target_sum = output.sum(), target.sum()
        difference = torch.linalg.vector_norm(output - target, ord=1)
    intersection = (output_sum + target_sum - difference) / 2
    fp, fn = output_sum - intersection, target_sum - intersection
    return (intersection + smooth) / (intersection + alpha * fp + beta * fn + smooth).clamp_min(eps)


def smp_overlap_loss(y_pred, y_true, mode, alpha=0.5, beta=0.5, gamma=1.0, classes=None, log_loss=False,
                     from_logits=True, smooth=0.0, ignore_index=None, eps=1e-7, class_weights=None):  # fmt: skip
    """smp's DiceLoss (alpha = beta = 0.5), JaccardLoss (alpha = beta = 1) and TverskyLoss forward."""
    if from_logits:
        y_pred = y_pred.log_softmax(dim=1).exp() if mode == "multiclass" else F.logsigmoid(y_pred).exp()
    bs, num_classes, dims = y_true.size(0), y_pred.size(1), (0, 2)
    if mode == "binary":
        y_true, y_pred = y_true.reshape(bs, 1, -1), y_pred.reshape(bs, 1, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred, y_true = y_pred * mask, y_true * mask
    if mode == "multiclass":
        y_true, y_pred = y_true.reshape(bs, -1), y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask.unsqueeze(1)
            y_true = F.one_hot((y_true * mask).to(torch.long), num_classes).permute(0, 2, 1) * mask.unsqueeze(1)
        else:
            y_true = F.one_hot(y_true, num_classes).permute(0, 2, 1)
    if mode == "multilabel":
        y_true, y_pred = y_true.reshape(bs, num_classes, -1), y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred, y_true = y_pred * mask, y_true * mask
    scores = smp_soft_tversky_score(y_pred, y_true.type_as(y_pred), alpha, beta, smooth, eps, dims)
    loss = -torch.log(scores.clamp_min(eps)) if log_loss else 1.0 - scores
    loss = loss * (y_true.sum(dims) > 0).to(loss.dtype)
    if classes is not None:
        loss = loss[classes]
    if class_weights is not None:
        weights = torch.tensor(class_weights, dtype=torch.float32)  # smp: to_tensor(class_weights, torch.float)
        weights = weights if classes is None else weights[classes]
        return ((loss * weights).sum() / weights.sum()) ** gamma
    return loss.mean() ** gamma


def smp_mcc_loss(y_pred, y_true, eps=1e-5):
    bs = y_true.shape[0]
    y_true, y_pred = y_true.reshape(bs, 1, -1), y_pred.reshape(bs, 1, -1)
    tp = torch.sum(y_pred * y_true) + eps
    tn = torch.sum((1 - y_pred) * (1 - y_true)) + eps
    fp = torch.sum(y_pred * (1 - y_true)) + eps
    fn = torch.sum((1 - y_pred) * y_true) + eps
    numerator = tp * tn - fp * fn
    denominator = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 1.0 - numerator.sum() / denominator.sum()


SMP_LOSSES = {  # smp's class -> (our loss, our kwargs, smp alpha/beta, factor of smp's smooth in ours)
    "DiceLoss": ("dice", {}, (0.5, 0.5), 2.0),
    "JaccardLoss": ("dice", {"jaccard": True}, (1.0, 1.0), 2.0),
    "TverskyLoss": ("tversky", {}, None, 1.0),
}


def ours_for_smp(smp_class, mode, smooth=0.0, alpha=0.5, beta=0.5, **kwargs):
    """Our loss equal to smp's ``smp_class(mode, smooth, ...)`` (see the module docstring)."""
    name, extra, _, factor = SMP_LOSSES[smp_class]
    if smp_class == "TverskyLoss":
        extra = {"alpha": alpha, "beta": beta}
    if mode == "multilabel":
        extra = {**extra, "multilabel": True, "soft_label": True}
    return get_loss(name, per_image=False, smooth=smooth * factor, **extra, **kwargs)


# smp's tests/test_losses.py, one row per assertion: (id, smp class, mode, y_pred, y_true, smp's expected, ours)
# where ours is smp's value except where our convention differs on purpose (a class absent from the labels keeps
# the loss of its false positives: smp gives 0).
BINARY_ROWS = [  # test_dice_loss_binary / test_tversky_loss_binary / test_binary_jaccard_loss, from_logits=False
    ([1.0, 1.0, 1.0], [1, 1, 1], 0.0, 0.0),
    ([1.0, 0.0, 1.0], [1, 0, 1], 0.0, 0.0),
    ([0.0, 0.0, 0.0], [0, 0, 0], 0.0, 0.0),  # nothing to find, nothing predicted: 0 / 0 is a perfect score
    ([1.0, 1.0, 1.0], [0, 0, 0], 0.0, 1.0),  # smp zeroes the absent class; we keep its false positives
    ([1.0, 0.0, 1.0], [0, 1, 0], 1.0, 1.0),
    ([0.0, 0.0, 0.0], [1, 1, 1], 1.0, 1.0),
]
SMP_TABLE = (
    [
        (f"{smp_class}-binary-{i}", smp_class, "binary", y_pred, y_true, expected, ours)
        for smp_class in ("DiceLoss", "TverskyLoss", "JaccardLoss")
        for i, (y_pred, y_true, expected, ours) in enumerate(BINARY_ROWS)
    ]
    + [  # test_multiclass_jaccard_loss
        ("JaccardLoss-multiclass-0", "JaccardLoss", "multiclass", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]],
         [[0, 0, 1, 1]], 0.0, 0.0),
        ("JaccardLoss-multiclass-1", "JaccardLoss", "multiclass", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]],
         [[1, 1, 0, 0]], 1.0, 1.0),
        ("JaccardLoss-multiclass-2", "JaccardLoss", "multiclass", [[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]],
         [[1, 1, 0, 0]], 1.0 - 1.0 / 3.0, 1.0 - 1.0 / 3.0),
    ]
    + [  # test_multilabel_jaccard_loss
        ("JaccardLoss-multilabel-0", "JaccardLoss", "multilabel", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]],
         [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], 0.0, 0.0),
        ("JaccardLoss-multilabel-1", "JaccardLoss", "multilabel", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]],
         [[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]], 1.0, 1.0),
        ("JaccardLoss-multilabel-2", "JaccardLoss", "multilabel", [[[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]],
         [[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]], 1.0 - 1.0 / 3.0, 1.0 - 1.0 / 3.0),
    ]
)  # fmt: skip


@pytest.mark.parametrize("case", SMP_TABLE, ids=[case[0] for case in SMP_TABLE])
def test_smp_test_table(case):
    _, smp_class, mode, y_pred, y_true, expected, ours_expected = case
    y_pred = tensor(y_pred).reshape(1, -1, tensor(y_pred).shape[-1])
    labels = tensor(y_true) if mode == "multilabel" else torch.tensor(y_true).reshape(1, -1)
    alpha_beta = SMP_LOSSES[smp_class][2] or (0.5, 0.5)
    smp_value = smp_overlap_loss(y_pred, labels, mode, *alpha_beta, from_logits=False)
    assert smp_value.item() == pytest.approx(expected, abs=1e-5)  # the re-implementation reproduces smp's table
    value = ours_for_smp(smp_class, mode, from_logits=False)(y_pred, labels)
    assert value.item() == pytest.approx(ours_expected, abs=1e-6)


SCORE_TABLE = [  # test_soft_jaccard_score, test_soft_dice_score, test_soft_tversky_score: (y_true, y_pred, score)
    ("jaccard", [1, 1, 1, 1], [1, 1, 1, 1], 1.0),
    ("jaccard", [0, 1, 1, 0], [0, 1, 1, 0], 1.0),
    ("jaccard", [1, 1, 1, 1], [1, 1, 0, 0], 0.5),
    ("dice", [1, 1, 1, 1], [1, 1, 1, 1], 1.0),
    ("dice", [0, 1, 1, 0], [0, 1, 1, 0], 1.0),
    ("dice", [1, 1, 1, 1], [1, 1, 0, 0], 2.0 / 3.0),
    ("tversky", [1, 1, 1, 1], [1, 1, 1, 1], 1.0),
    ("tversky", [0, 1, 1, 0], [0, 1, 1, 0], 1.0),
    ("tversky", [1, 1, 1, 1], [1, 1, 0, 0], 2.0 / 3.0),
    # test_soft_jaccard_score_2: one score per row (dims=[1]), then the mean
    ("jaccard", [[1, 1, 0, 0], [0, 0, 1, 1]], [[1, 1, 0, 0], [0, 0, 1, 1]], 1.0),
    ("jaccard", [[1, 1, 0, 0], [0, 0, 1, 1]], [[0, 0, 1, 0], [0, 1, 0, 0]], 0.0),
    ("jaccard", [[1, 1, 0, 0], [0, 0, 0, 1]], [[1, 1, 0, 0], [0, 0, 0, 0]], 0.5),
]
SCORE_LOSSES = {
    "jaccard": ("dice", {"jaccard": True}),
    "dice": ("dice", {}),
    "tversky": ("tversky", {"alpha": 0.5, "beta": 0.5}),
}


@pytest.mark.parametrize("kind,y_true,y_pred,score", SCORE_TABLE)
def test_smp_score_table(kind, y_true, y_pred, score):
    """A row is a class: our multi-label loss over probabilities is 1 - the mean of the rows' scores."""
    y_true, y_pred = tensor(y_true).reshape(1, -1, 4), tensor(y_pred).reshape(1, -1, 4)
    name, kwargs = SCORE_LOSSES[kind]
    loss = get_loss(name, smooth=0.0, multilabel=True, from_logits=False, **kwargs)
    assert 1.0 - loss(y_pred, y_true).item() == pytest.approx(score, abs=1e-6)


SMP_MCC_TABLE = [  # test_binary_mcc_loss: (y_pred, y_true, expected), shapes (1, 2, 4) read as one binary channel
    ([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], 0.0),
    ([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], 2.0),
    ([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], 1.0),
    ([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], 1.0),
    ([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], 1.5),
    ([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], 0.5),
]


@pytest.mark.parametrize("y_pred,y_true,expected", SMP_MCC_TABLE)
@pytest.mark.parametrize("labels_as", ["float", "index"])
def test_smp_mcc_table(y_pred, y_true, expected, labels_as):
    y_pred, y_true = tensor(y_pred).reshape(1, 1, 8), tensor(y_true).reshape(1, 1, 8)
    assert smp_mcc_loss(y_pred, y_true).item() == pytest.approx(expected, abs=1e-5)
    kwargs = {"multilabel": True} if labels_as == "float" else {}
    labels = y_true if labels_as == "float" else y_true[:, 0].long()
    loss = get_loss("mcc", eps=1e-5, per_image=False, from_logits=False, **kwargs)
    assert loss(y_pred, labels).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("smp_class", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
def test_smp_class_weights_properties(smp_class):
    """smp's class-weight tests: uniform weights equal none, weights are scale invariant, and change the loss."""
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 3, 4, 4, generator=generator), torch.randint(0, 3, (2, 4, 4), generator=generator)
    targets = torch.randint(0, 2, (2, 3, 4, 4), generator=generator).float()
    for mode, y in (("multiclass", labels), ("multilabel", targets)):
        plain = ours_for_smp(smp_class, mode)(logits, y)
        torch.testing.assert_close(ours_for_smp(smp_class, mode, class_weights=[1.0, 1.0, 1.0])(logits, y), plain)
        weighted = ours_for_smp(smp_class, mode, class_weights=[1.0, 2.0, 0.5])(logits, y)
        torch.testing.assert_close(ours_for_smp(smp_class, mode, class_weights=[10.0, 20.0, 5.0])(logits, y), weighted)
        assert not torch.allclose(weighted, plain, atol=1e-6)
    with pytest.raises(ValueError, match=r"`class_weights` chooses or weighs classes .* one channel"):
        ours_for_smp(smp_class, "binary", class_weights=[1.0])(logits[:, :1], labels.clamp(max=1))


SMP_RANDOM_OPTIONS = [
    {},
    {"smooth": 0.5},
    {"log_loss": True},
    {"classes": [0, 2]},
    {"class_weights": [0.2, 1.0, 3.0]},
    {"classes": [1, 2], "class_weights": [5.0, 1.0, 2.0], "log_loss": True, "smooth": 0.1},
    {"from_logits": False},
    {"ignore_index": -100},
]


def smp_random_inputs(mode, seed, ignore=False):
    generator = torch.Generator().manual_seed(seed)
    c = 1 if mode == "binary" else 3
    logits = torch.randn(4, c, 6, 5, generator=generator, dtype=torch.float64) * 2
    if mode == "multilabel":
        labels = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
        labels = torch.where(labels < 0.5, (labels < 0.25).double(), labels)  # hard and soft targets
    else:
        labels = torch.randint(0, max(c, 2), (4, 6, 5), generator=generator)
    if ignore:
        labels = labels.masked_fill(torch.rand(labels.shape, generator=generator) < 0.2, -100)
    return logits, labels


@pytest.mark.parametrize("smp_class", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel", "binary"])
@pytest.mark.parametrize("options", SMP_RANDOM_OPTIONS, ids=lambda o: "-".join(o) or "default")
def test_equals_smp_formula_randomized(smp_class, mode, options):
    options = dict(options)
    ignore = options.pop("ignore_index", None) is not None
    logits, labels = smp_random_inputs(mode, seed=len(smp_class) + len(options), ignore=ignore)
    if mode == "binary" and ("classes" in options or "class_weights" in options):
        # smp refuses classes and class_weights in binary mode; we refuse them for one channel
        with pytest.raises(ValueError, match=r"chooses or weighs classes in the class mean, but the logits have one"):
            ours_for_smp(smp_class, mode, **options)(logits, labels)
        return
    first = logits
    if options.get("from_logits") is False:
        first = torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)
    first = first.clone().requires_grad_()
    alpha, beta = SMP_LOSSES[smp_class][2] or (0.3, 0.7)
    expected = smp_overlap_loss(first, labels, mode, alpha, beta, ignore_index=-100 if ignore else None, **options)
    value = ours_for_smp(smp_class, mode, alpha=alpha, beta=beta, **options)(first, labels)
    torch.testing.assert_close(value, expected, rtol=1e-7, atol=1e-12)  # smp sums its class weights in float32
    (grad,) = torch.autograd.grad(value, first)
    (expected_grad,) = torch.autograd.grad(expected, first)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.75, 2.0])
@pytest.mark.parametrize("log_loss", [False, True])
def test_focal_tversky_equals_smp_tversky_gamma_for_one_class(gamma, log_loss):
    logits, labels = smp_random_inputs("binary", seed=5)
    expected = smp_overlap_loss(logits, labels, "binary", 0.3, 0.7, gamma=gamma, log_loss=log_loss, smooth=0.2)
    ours = get_loss("focal_tversky", alpha=0.3, beta=0.7, gamma=gamma, log_loss=log_loss, smooth=0.2, per_image=False)
    torch.testing.assert_close(ours(logits, labels), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("labels_as", ["index", "hard-float", "soft-float"])
def test_mcc_equals_smp_formula_randomized(labels_as):
    generator = torch.Generator().manual_seed(9)
    probs = torch.rand(4, 1, 7, 6, generator=generator, dtype=torch.float64).requires_grad_()
    hard = (torch.rand(probs.shape, generator=generator, dtype=torch.float64) < 0.3).double()
    targets = torch.rand(probs.shape, generator=generator, dtype=torch.float64) if labels_as == "soft-float" else hard
    expected = smp_mcc_loss(probs, targets, eps=1e-5)
    kwargs = {} if labels_as == "index" else {"multilabel": True}
    labels = targets[:, 0].long() if labels_as == "index" else targets
    value = get_loss("mcc", per_image=False, from_logits=False, **kwargs)(probs, labels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(value, probs)[0], torch.autograd.grad(expected, probs)[0])


def test_absent_class_convention_differs_from_smp_on_purpose():
    """A class absent from the labels: smp sets its loss to 0 (and keeps it in the mean), we keep the loss of its
    false positives (as MONAI), so predicting it where it is not is penalised."""
    logits = torch.tensor([[[2.0, -1.0, 0.5, 1.0], [0.0, 1.0, 0.0, -2.0], [1.0, 0.0, 2.0, 0.0]]])
    labels = torch.tensor([[0, 1, 0, 1]])  # class 2 absent
    smp_value = smp_overlap_loss(logits, labels, "multiclass")
    probs = torch.softmax(logits, 1)[0]
    per_class = [1 - 2 * probs[c][labels[0] == c].sum() / (probs[c].sum() + (labels[0] == c).sum()) for c in range(3)]
    assert smp_value.item() == pytest.approx((per_class[0] + per_class[1]).item() / 3, rel=1e-6)
    ours = ours_for_smp("DiceLoss", "multiclass")(logits, labels)
    assert ours.item() == pytest.approx(sum(per_class).item() / 3, rel=1e-6)  # class 2 loses 1 - 0 / |P_2| = 1
