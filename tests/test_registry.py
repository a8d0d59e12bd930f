"""The registry: names, aliases, kwargs validation, describe_loss, register_loss, third-party entry points
(a real importlib.metadata distribution written into a temporary folder) and composite expressions."""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from hf_losses import describe_loss, get_loss, list_losses, register_loss, registry
from hf_losses.losses.base import Loss
from hf_losses.losses.classification import CrossEntropyLoss, FocalLoss

OWN_LOSSES = [
    "asl",
    "bce",
    "class_balanced",
    "cost_sensitive",
    "cross_entropy",
    "fn_penalty",
    "focal",
    "ldam",
    "poly1",
    "sigmoid_focal",
]


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test are dropped afterwards; entry points are looked up again."""
    registry._ensure_loaded()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    return registry


# ------------------------------------------------------------------------------------------------ names
def test_list_losses_is_sorted_and_holds_the_builtin_losses():
    names = list_losses()
    assert names == sorted(names)
    assert set(OWN_LOSSES + ["composite"]) <= set(names)


@pytest.mark.parametrize("name", OWN_LOSSES)
def test_get_loss_builds_a_loss_module_carrying_its_registered_name(name):
    required = {
        "class_balanced": {"samples_per_class": [3, 1]},
        "ldam": {"samples_per_class": [3, 1]},
        "cost_sensitive": {"cost_matrix": [[0, 1], [2, 0]]},
    }
    loss = get_loss(name, **required.get(name, {}))
    assert isinstance(loss, Loss) and loss.name == name


def test_aliases_resolve_to_the_canonical_loss():
    assert type(get_loss("ce")) is CrossEntropyLoss
    assert type(get_loss("focal_loss", gamma=1.0)) is FocalLoss
    assert describe_loss("ce").name == "cross_entropy"
    assert "ce" in describe_loss("cross_entropy").aliases


def test_unknown_name_suggests_close_matches_and_lists_the_available_losses():
    with pytest.raises(
        ValueError, match=r"Unknown loss 'focall'\. Did you mean 'focal'.*Available losses: .*cross_entropy"
    ):
        get_loss("focall")
    with pytest.raises(ValueError) as error:
        get_loss("qqqqqq")
    assert "Did you mean" not in str(error.value) and "Available losses: " in str(error.value)
    with pytest.raises(TypeError, match="Loss name must be a string"):
        get_loss(3)


def test_unknown_parameter_names_the_loss_the_closest_parameter_and_the_allowed_ones():
    with pytest.raises(
        ValueError,
        match=r"loss 'cross_entropy': unknown parameter 'weights'\. Did you mean 'weight'\? "
        r"Allowed parameters: weight, label_smoothing, ignore_index, reduction, normalize\.",
    ):
        get_loss("cross_entropy", weights=[1.0, 2.0])


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("focal", {"gamma": True}, r"parameter 'gamma' must be float, got bool True"),
        ("focal", {"alpha": "0.25"}, r"parameter 'alpha' must be float or list of float or a Tensor or None, got str"),
        ("cross_entropy", {"weight": "balanced"}, r"parameter 'weight' must be list of float or a Tensor or None"),
        (
            "cost_sensitive",
            {"cost_matrix": [[0, 1], ["a", 0]]},
            r"parameter 'cost_matrix' must be list of list of float",
        ),
        ("cross_entropy", {"ignore_index": -100.0}, r"parameter 'ignore_index' must be int, got float"),
    ],
)
def test_mistyped_parameter_raises_type_error_with_the_expected_type(name, kwargs, message):
    with pytest.raises(TypeError, match=f"loss '{name}': " + message):
        get_loss(name, **kwargs)


def test_integers_are_accepted_where_floats_are_expected():
    assert get_loss("focal", gamma=2, alpha=[1, 2]).gamma == 2.0
    assert get_loss("cost_sensitive", cost_matrix=[[0, 1], [5, 0]]).cost_matrix.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ describe
def test_describe_loss_gives_parameters_types_defaults_summary_and_reference():
    description = describe_loss("class_balanced")
    parameters = {p.name: p for p in description.parameters}
    assert list(parameters) == ["samples_per_class", "beta", "base", "gamma", "ignore_index", "reduction", "normalize"]
    assert (
        parameters["samples_per_class"].required and parameters["samples_per_class"].type == "list of float or a Tensor"
    )
    assert parameters["beta"].default == 0.9999 and parameters["beta"].type == "float"
    assert parameters["base"].type == "one of 'ce', 'focal'" and parameters["base"].default == "ce"
    assert "Cui et al. 2019" in description.reference
    text = str(description)
    assert text.splitlines()[0] == f"class_balanced: {description.summary}"
    assert "samples_per_class: list of float or a Tensor (required)" in text
    assert "beta: float (default 0.9999)" in text
    assert "averages over: label (decomposable); labels: index" in text


# ------------------------------------------------------------------------------------------------ register_loss
def test_register_loss_accepts_a_class_and_a_factory_with_aliases(isolated_registry):
    @register_loss("test_mae", aliases=("test_l1",))
    class MeanAbsoluteError(Loss):
        label_kind = "binary"
        summary = "mean absolute error"

        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def loss_sum(self, logits, labels):
            return self.scale * (logits - labels).abs().sum(), labels.numel()

    @register_loss("test_scaled_mae")
    def scaled(scale: float = 2.0) -> Loss:
        return MeanAbsoluteError(scale)

    assert {"test_mae", "test_scaled_mae"} <= set(list_losses())
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert get_loss("test_l1")(x, y).item() == pytest.approx(1.5)
    assert get_loss("test_scaled_mae")(x, y).item() == pytest.approx(3.0)
    assert MeanAbsoluteError.name == "test_mae"
    with pytest.raises(TypeError, match="parameter 'scale' must be float"):
        get_loss("test_scaled_mae", scale="big")


def test_register_loss_rejects_bad_names_and_non_callables():
    with pytest.raises(ValueError, match=r"register_loss: `name` must be an identifier"):
        register_loss("my loss")
    with pytest.raises(TypeError, match=r"register_loss\('test_thing'\): expected a class or factory"):
        register_loss("test_thing")(42)


# ------------------------------------------------------------------------------------------------ entry points
def write_distribution(folder, entry_points):
    """A minimal installed distribution (``*.dist-info``) with ``entry_points.txt``, and its module."""
    (folder / "hf_losses_test_plugin.py").write_text(
        textwrap.dedent('''
        from hf_losses.losses.base import Loss

        class SquaredHinge(Loss):
            """Squared hinge loss for +-1 targets (a third-party loss)."""

            summary = "squared hinge"
            reference = "a third-party package"
            label_kind = "binary"

            def __init__(self, margin: float = 1.0) -> None:
                super().__init__()
                self.margin = margin

            def loss_sum(self, logits, labels):
                signs = 2 * labels - 1
                return (self.margin - signs * logits).clamp(min=0).pow(2).sum(), labels.numel()
    ''')
    )
    info = folder / "hf_losses_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hf-losses-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hf_losses.losses]\n" + entry_points)


def test_third_party_loss_is_discovered_through_its_entry_point(tmp_path, monkeypatch, isolated_registry):
    write_distribution(tmp_path, "squared_hinge = hf_losses_test_plugin:SquaredHinge\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.delitem(__import__("sys").modules, "hf_losses_test_plugin", raising=False)
    assert "squared_hinge" in list_losses()
    loss = get_loss("squared_hinge", margin=2.0)
    # targets 1, 0 -> signs +1, -1: hinge terms max(0, 2 - 0.5) = 1.5 and max(0, 2 + 3) = 5
    value = loss(torch.tensor([[0.5, 3.0]]), torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx((1.5**2 + 5.0**2) / 2)
    assert describe_loss("squared_hinge").summary == "squared hinge"
    assert loss.name == "squared_hinge"


def test_broken_entry_point_warns_and_builtin_entry_point_names_are_not_overridden(
    tmp_path, monkeypatch, isolated_registry
):
    write_distribution(
        tmp_path, "broken_plugin = hf_losses_no_such_module:Nope\nfocal = hf_losses_test_plugin:SquaredHinge\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.warns(UserWarning, match=r"could not load loss 'broken_plugin'"):
        names = list_losses()
    assert "broken_plugin" not in names
    assert type(get_loss("focal")) is FocalLoss


# ------------------------------------------------------------------------------------------------ composite
def test_composite_expression_parses_weights_aliases_and_defaults():
    parsed = registry.parse_composite_expression("0.5*ce + 2e-1 * focal+poly1")
    assert parsed == {"cross_entropy": 0.5, "focal": 0.2, "poly1": 1.0}


@pytest.mark.parametrize(
    "expression,error,message",
    [
        ("0.5*cross_entropy+", ValueError, r"Cannot parse loss expression '0\.5\*cross_entropy\+' at ''"),
        ("ce+cross_entropy", ValueError, r"names 'cross_entropy' twice"),
        ("0.5*focl+0.5*ce", ValueError, r"Unknown loss 'focl'\. Did you mean 'focal'"),
        ("cross_entropy*0.5+focal", ValueError, r"Cannot parse loss expression"),
    ],
)
def test_bad_composite_expressions_are_refused(expression, error, message):
    with pytest.raises(error, match=message):
        get_loss(expression)


def test_composite_from_string_equals_weighted_sum_and_exposes_components():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=generator), torch.tensor([0, 2, 1, -100, 2, 0])
    composite = get_loss("0.3*cross_entropy+0.7*focal", focal={"gamma": 1.0})
    value = composite(logits, labels)
    cross_entropy = F.cross_entropy(logits, labels)
    focal = get_loss("focal", gamma=1.0)(logits, labels)
    torch.testing.assert_close(value, 0.3 * cross_entropy + 0.7 * focal)
    assert set(composite.last_components) == {"cross_entropy", "focal"}
    torch.testing.assert_close(composite.last_components["cross_entropy"], cross_entropy)
    torch.testing.assert_close(composite.last_components["focal"], focal)
    assert not composite.last_components["focal"].requires_grad


def test_composite_from_dict_equals_string_form_and_decomposes():
    generator = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(6, 4, generator=generator), (torch.rand(6, 4, generator=generator) < 0.4).float()
    targets[2, :] = -100.0
    from_string = get_loss("0.5*bce+2*asl", bce={"pos_weight": [1.0, 2.0, 3.0, 4.0]})
    from_dict = get_loss(
        "composite",
        components={"bce": {"pos_weight": [1.0, 2.0, 3.0, 4.0]}, "asl": {}},
        weights={"bce": 0.5, "asl": 2.0},
    )
    whole = from_dict(logits, targets)
    torch.testing.assert_close(from_string(logits, targets), whole)
    num_items = from_dict.num_items(targets)
    parts = sum(from_dict(x, t, num_items_in_batch=num_items) for x, t in zip(logits.split(2), targets.split(2)))
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)


def test_composite_refuses_mixed_label_kinds_and_stray_weights():
    with pytest.raises(ValueError, match="mix integer-label and float-label losses"):
        get_loss("cross_entropy+bce")
    with pytest.raises(ValueError, match=r"`weights` names \['dice_typo'\] which are not components"):
        get_loss("composite", components={"cross_entropy": {}}, weights={"dice_typo": 1.0})
    with pytest.raises(TypeError, match=r"the options of 'focal' must be a dict"):
        get_loss("ce+focal", focal=2.0)
