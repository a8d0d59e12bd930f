"""distillation (logits) against hand-computed values, a plain-Python loop of the formula, and TRL's own
``generalized_jsd_loss`` (the convention for ``beta``)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss
from hf_losses.losses.composite import CompositeLoss
from hf_losses.losses.distillation import DistillationLoss, divergence

LN3 = math.log(3.0)


def make_batch(n=6, c=5, seed=0, ignore=(2,), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=generator) * 2).to(dtype)
    teacher = (torch.randn(n, c, generator=generator) * 2).to(dtype)
    labels = torch.randint(0, c, (n,), generator=generator)
    for i in ignore:
        labels[i] = -100
    return logits, teacher, labels


# ------------------------------------------------------------------------------------------------ references
def softmax_row(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def loop_divergence(p, q, beta):
    """TRL's convention with p = student, q = teacher, written out."""

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)

    if beta == 0:
        return kl(q, p)
    if beta == 1:
        return kl(p, q)
    m = [(1 - beta) * x + beta * y for x, y in zip(p, q)]
    return beta * kl(q, m) + (1 - beta) * kl(p, m)


def loop_distillation(logits, teacher, labels, temperature, alpha, beta, weight=None, smoothing=0.0):
    """Per-entry losses (0 at ignored entries), one row at a time; CE with class weights and smoothing as PyTorch."""
    items = []
    for row, teacher_row, y in zip(logits.tolist(), teacher.tolist(), labels.tolist()):
        if y == -100:
            items.append(0.0)
            continue
        p, q = softmax_row(row, temperature), softmax_row(teacher_row, temperature)
        soft = temperature**2 * loop_divergence(p, q, beta)
        log_p = [math.log(v) for v in softmax_row(row, 1.0)]
        w = [1.0] * len(row) if weight is None else weight
        c = len(row)
        hard = -(1 - smoothing) * w[y] * log_p[y] - smoothing / c * sum(wk * lp for wk, lp in zip(w, log_p))
        items.append(alpha * soft + (1 - alpha) * hard)
    return items


def trl_generalized_jsd():
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    return gkd.GKDTrainer.generalized_jsd_loss


# ------------------------------------------------------------------------------------------------ hand cases
# student [0, ln 3] -> p = (1/4, 3/4); teacher [ln 3, 0] -> q = (3/4, 1/4); label 1: CE = -ln(3/4)
HALF_LN3 = 0.5 * LN3
JSD_HALF = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(q || m) = KL(p || m) with m = (1/2, 1/2)
# beta = 0.25: m = 0.75 p + 0.25 q = (0.375, 0.625)
JSD_QUARTER = 0.25 * (0.75 * math.log(2) + 0.25 * math.log(0.4)) + 0.75 * (
    0.25 * math.log(2 / 3) + 0.75 * math.log(1.2)
)
CE = -math.log(0.75)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"alpha": 1.0, "beta": 0.0, "temperature": 1.0}, HALF_LN3),
        ({"alpha": 1.0, "beta": 1.0, "temperature": 1.0}, HALF_LN3),
        ({"alpha": 1.0, "beta": 0.5, "temperature": 1.0}, JSD_HALF),
        ({"alpha": 1.0, "beta": 0.25, "temperature": 1.0}, JSD_QUARTER),
        ({"alpha": 0.0, "temperature": 1.0}, CE),
        ({"alpha": 0.5, "beta": 0.0, "temperature": 1.0}, 0.5 * HALF_LN3 + 0.5 * CE),
        ({"alpha": 0.25, "beta": 0.5, "temperature": 1.0}, 0.25 * JSD_HALF + 0.75 * CE),
    ],
)
def test_hand_computed_values(kwargs, expected):
    logits, teacher = torch.tensor([[0.0, LN3]]), torch.tensor([[LN3, 0.0]])
    value = get_loss("distillation", **kwargs)(logits, torch.tensor([1]), teacher_logits=teacher)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_temperature_squared_scales_the_soft_part():
    # T = 3: p = softmax([0, ln3 / 3]), q = softmax([ln3 / 3, 0]); loss = T^2 KL(q || p)
    p = softmax_row([0.0, LN3], 3.0)
    expected = 9.0 * loop_divergence(p, p[::-1], 0.0)
    loss = get_loss("distillation", alpha=1.0, temperature=3.0)
    value = loss(torch.tensor([[0.0, LN3]]), torch.tensor([0]), teacher_logits=torch.tensor([[LN3, 0.0]]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_the_generalized_jsd_tends_to_zero_at_the_ends_where_trl_switches_to_the_kls():
    log_p = torch.log_softmax(torch.tensor([[0.0, LN3]], dtype=torch.float64), 1)
    log_q = log_p.flip(1)
    assert divergence(log_p, log_q, 1e-9).item() < 1e-8 and divergence(log_p, log_q, 1 - 1e-9).item() < 1e-8
    assert divergence(log_p, log_q, 0.0).item() == pytest.approx(HALF_LN3)


# ------------------------------------------------------------------------------------------------ references
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_equals_the_formula_written_as_a_loop(alpha, beta, temperature):
    logits, teacher, labels = make_batch(dtype=torch.float64)
    loss = get_loss("distillation", alpha=alpha, beta=beta, temperature=temperature)
    items = loop_distillation(logits, teacher, labels, temperature, alpha, beta)
    assert loss(logits, labels, teacher_logits=teacher).item() == pytest.approx(sum(items) / 5, rel=1e-12)


def test_class_weights_and_label_smoothing_weigh_the_cross_entropy_part_as_pytorch():
    logits, teacher, labels = make_batch(dtype=torch.float64)
    weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    loss = get_loss("distillation", alpha=0.3, beta=0.5, weight=weight, label_smoothing=0.1)
    items = loop_distillation(logits, teacher, labels, 2.0, 0.3, 0.5, weight, 0.1)
    assert loss(logits, labels, teacher_logits=teacher).item() == pytest.approx(sum(items) / 5, rel=1e-12)
    # the CE part is F.cross_entropy's unreduced weighted, smoothed value
    ce_only = get_loss("distillation", alpha=0.0, weight=weight, label_smoothing=0.1)
    expected = F.cross_entropy(
        logits, labels, weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=0.1, reduction="sum"
    )
    assert ce_only(logits, labels, teacher_logits=teacher).item() == pytest.approx(expected.item() / 5, rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_pure_distillation_equals_trl_generalized_jsd_times_t_squared(beta, temperature):
    generalized_jsd_loss = trl_generalized_jsd()
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 7, 11, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(2, 7, 11, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[0, :3] = -100
    expected = generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=temperature)
    loss = get_loss("distillation", alpha=1.0, beta=beta, temperature=temperature)
    value = loss(student.reshape(-1, 11), labels.reshape(-1), teacher_logits=teacher.reshape(-1, 11))
    assert value.item() == pytest.approx(temperature**2 * expected.item(), rel=1e-10)


def test_logits_with_extra_dimensions_take_classes_along_dim_1():
    # seq2seq / segmentation layout (N, C, d1, d2): the same as the entries flattened to (N*d1*d2, C)
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 5), generator=generator)
    labels[1, 0] = -100
    loss = get_loss("distillation", beta=0.5)
    flat = loss(
        student.permute(0, 2, 3, 1).reshape(-1, 4),
        labels.reshape(-1),
        teacher_logits=teacher.permute(0, 2, 3, 1).reshape(-1, 4),
    )
    assert loss(student, labels, teacher_logits=teacher).item() == pytest.approx(flat.item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------ contract
def test_ignored_entries_count_for_neither_part_and_all_ignored_gives_zero():
    logits, teacher, labels = make_batch()
    loss = get_loss("distillation", alpha=1.0)
    changed = teacher.clone()
    changed[2] += 10.0  # entry 2 is ignored: its teacher row must not matter
    assert loss(logits, labels, teacher_logits=teacher).item() == loss(logits, labels, teacher_logits=changed).item()
    student = logits.clone().requires_grad_()
    value = loss(student, torch.full_like(labels, -100), teacher_logits=teacher)
    value.backward()
    assert value.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student))


def test_divides_by_num_items_in_batch_as_a_number_or_a_mapping():
    logits, teacher, labels = make_batch()
    loss = get_loss("distillation")
    total = loss(logits, labels, teacher_logits=teacher) * 5
    assert loss(logits, labels, num_items_in_batch=20, teacher_logits=teacher).item() == pytest.approx(total / 20)
    mapping = {"label": torch.tensor(20)}
    assert loss(logits, labels, num_items_in_batch=mapping, teacher_logits=teacher).item() == pytest.approx(total / 20)


def test_sample_weights_reduction_and_normalize_follow_the_per_entry_losses():
    logits, teacher, labels = make_batch(dtype=torch.float64)
    weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    items = torch.tensor(loop_distillation(logits, teacher, labels, 2.0, 0.5, 0.0, weight), dtype=torch.float64)
    none = get_loss("distillation", weight=weight, reduction="none")(logits, labels, teacher_logits=teacher)
    torch.testing.assert_close(none, items, rtol=1e-12, atol=1e-14)
    sample_weight = torch.tensor([1.0, 0.0, 5.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    weighted = get_loss("distillation", weight=weight)(
        logits, labels, sample_weight=sample_weight, teacher_logits=teacher
    )
    assert weighted.item() == pytest.approx((items * sample_weight).sum().item() / 5, rel=1e-12)
    class_weight_sum = sum(weight[y] for y in labels.tolist() if y != -100)
    by_weight = get_loss("distillation", weight=weight, normalize="weight")(logits, labels, teacher_logits=teacher)
    assert by_weight.item() == pytest.approx(items.sum().item() / class_weight_sum, rel=1e-12)


def test_last_components_split_the_value_into_its_two_parts():
    logits, teacher, labels = make_batch(dtype=torch.float64)
    loss = get_loss("distillation", alpha=0.3, beta=0.5)
    sample_weight = torch.tensor([1.0, 0.0, 5.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    value = loss(logits, labels, sample_weight=sample_weight, teacher_logits=teacher)
    parts = loss.last_components
    soft_alone = get_loss("distillation", alpha=1.0, beta=0.5)(
        logits, labels, sample_weight=sample_weight, teacher_logits=teacher
    )
    assert parts["distillation"].item() == pytest.approx(0.3 * soft_alone.item(), rel=1e-10)
    assert (parts["distillation"] + parts["cross_entropy"]).item() == pytest.approx(value.item(), rel=1e-12)
    assert get_loss("distillation", alpha=1.0).last_components == {}


def test_the_teacher_gets_no_gradient_and_the_student_the_formula_s():
    logits, teacher, labels = make_batch(dtype=torch.float64)
    student, teacher = logits.clone().requires_grad_(), teacher.clone().requires_grad_()
    get_loss("distillation", beta=0.5)(student, labels, teacher_logits=teacher).backward()
    assert teacher.grad is None
    reference = logits.clone().requires_grad_()
    soft = divergence(
        torch.log_softmax(reference / 2, 1), torch.log_softmax(teacher.detach() / 2, 1), 0.5
    ) * 4 * 0.5 + 0.5 * F.cross_entropy(reference, labels, reduction="none")
    (soft * (labels != -100)).sum().div(5).backward()
    torch.testing.assert_close(student.grad, reference.grad, rtol=1e-12, atol=1e-14)


def test_half_precision_logits_are_computed_in_float32():
    logits, teacher, labels = make_batch()
    loss = get_loss("distillation", beta=0.5)
    half = loss(logits.bfloat16(), labels, teacher_logits=teacher.bfloat16())
    exact = loss(logits.bfloat16().float(), labels, teacher_logits=teacher.bfloat16().float())
    assert half.dtype == torch.float32 and half.item() == exact.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(logits, labels, teacher_logits=teacher).item() == pytest.approx(
            loss(logits, labels, teacher_logits=teacher).item(), rel=1e-6
        )


# ------------------------------------------------------------------------------------------------ errors
def test_a_call_without_the_teacher_says_how_to_give_it():
    logits, _, labels = make_batch()
    with pytest.raises(TypeError, match=r"loss 'distillation': needs the teacher's logits: call loss\(logits"):
        get_loss("distillation")(logits, labels)


def test_student_and_teacher_with_different_vocabularies_are_refused_naming_both_shapes():
    logits, _, labels = make_batch()
    message = (
        r"student and teacher disagree on the number of classes/vocabulary \(dim 1\): logits \(6, 5\), "
        r"teacher_logits \(6, 7\)"
    )
    with pytest.raises(ValueError, match=message):
        get_loss("distillation")(logits, labels, teacher_logits=torch.zeros(6, 7))
    with pytest.raises(ValueError, match=r"the teacher's logits must be shaped like the student's"):
        get_loss("distillation")(logits, labels, teacher_logits=torch.zeros(5, 5))
    with pytest.raises(TypeError, match=r"`teacher_logits` must be a floating-point tensor"):
        get_loss("distillation")(logits, labels, teacher_logits=torch.zeros(6, 5, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 0.0}, r"`temperature` must be in \(0, inf\), got 0"),
        ({"alpha": 1.5}, r"`alpha` must be in \[0, 1\], got 1.5"),
        ({"beta": -0.1}, r"`beta` must be in \[0, 1\], got -0.1"),
        ({"label_smoothing": 2.0}, r"`label_smoothing` must be in \[0, 1\]"),
        ({"weight": [1.0, -1.0]}, r"every entry of `weight` must be >= 0"),
    ],
)
def test_parameters_are_validated_naming_the_loss_and_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=r"loss 'distillation': " + message):
        get_loss("distillation", **kwargs)


# ------------------------------------------------------------------------------------------------ registry
def test_registered_with_the_teacher_attributes_the_trainer_dispatches_on():
    loss = get_loss("kd")
    assert isinstance(loss, DistillationLoss) and loss.name == "distillation"
    assert loss.needs_teacher is True and loss.teacher_input == "logits"
    lm = get_loss("causal_lm_distillation")
    assert lm.needs_teacher is True and lm.teacher_input == "hidden_states"


def test_describe_shows_the_formula_and_trl_s_convention_for_beta():
    text = str(describe_loss("distillation"))
    assert "alpha*T^2*D_beta(teacher, student) + (1-alpha)*CE(student, labels)" in text
    assert "beta=0 forward KL(teacher||student), beta=1 reverse KL(student||teacher)" in text
    assert "M = (1-beta)*student + beta*teacher" in text
    assert "weight: " in text and "temperature: float (default 2.0)" in text


def test_composed_with_another_loss_the_teacher_reaches_the_component_that_wants_it():
    loss = get_loss("distillation+0.5*focal")
    assert isinstance(loss, CompositeLoss) and loss.losses["distillation"].needs_teacher
    assert loss.needs_teacher and loss.teacher_input == "logits"
    logits, teacher, labels = make_batch()
    value = loss(logits, labels, teacher_logits=teacher)
    expected = get_loss("distillation")(logits, labels, teacher_logits=teacher) + 0.5 * get_loss("focal")(
        logits, labels
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
