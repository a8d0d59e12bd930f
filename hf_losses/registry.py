"""Name -> loss factory. Built-in losses register with :func:`register_loss`; third-party packages add theirs
through the entry-point group ``hf_losses.losses`` (``name = "package.module:LossClass"``)."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from torch import Tensor, nn

from hf_losses.suggestions import did_you_mean

ENTRY_POINT_GROUP = "hf_losses.losses"
_BUILTIN_MODULES = (
    "hf_losses.losses.classification",
    "hf_losses.losses.cost_sensitive",
    "hf_losses.losses.multilabel",
    "hf_losses.losses.segmentation",
    "hf_losses.losses.lovasz",
    "hf_losses.losses.mcc",
    "hf_losses.losses.regression",
    "hf_losses.losses.contrastive",
    "hf_losses.losses.ranking",
    "hf_losses.losses.language",
    "hf_losses.losses.distillation",
    "hf_losses.losses.composite",
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_loaded = False
# "0.5*cross_entropy + 0.5*dice": a sum of optionally weighted names
_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_][\w.]*)\s*$")

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_loss(name: str, *, aliases: Sequence[str] = ()) -> Callable[[F], F]:
    """Decorator registering a loss class (or a factory returning an ``nn.Module``) under ``name``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
        raise ValueError(f"register_loss: `name` must be an identifier such as 'my_loss', got {name!r}.")

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register_loss('{name}'): expected a class or factory function, got {factory!r}.")
        _REGISTRY[name] = factory
        for alias in aliases:
            _ALIASES[alias] = name
        if isinstance(factory, type) and "name" not in factory.__dict__:
            factory.name = name
        return factory

    return decorator


def _ensure_loaded() -> None:
    """Import the built-in families and third-party entry points once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:  # a family not shipped (yet) must not break the others
            if error.name != module:
                raise
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in _REGISTRY:
            continue
        try:
            register_loss(entry_point.name)(entry_point.load())
        except Exception as error:  # a broken plugin must not take down the built-in losses
            import warnings

            warnings.warn(
                f"hf-losses: could not load loss '{entry_point.name}' from entry point '{entry_point.value}': {error}",
                stacklevel=2,
            )


def list_losses() -> list[str]:
    """Sorted names of every registered loss (built-in and entry-point)."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def resolve_name(name: str) -> str:
    """Canonical registered name for ``name`` or an alias; unknown names raise with close matches and the list."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise TypeError(f"Loss name must be a string, got {type(name).__name__} {name!r}.")
    name = _ALIASES.get(name, name)
    if name in _REGISTRY:
        return name
    hint = did_you_mean(name, sorted(_REGISTRY) + sorted(_ALIASES), n=3)
    raise ValueError(f"Unknown loss '{name}'.{hint} Available losses: {', '.join(sorted(_REGISTRY))}.")


def is_expression(loss_type: str) -> bool:
    """True for a composite expression such as ``"0.5*cross_entropy+0.5*dice"`` (rather than one loss name)."""
    return isinstance(loss_type, str) and ("+" in loss_type or "*" in loss_type)


def component_names(loss_type: str) -> list[str]:
    """Registered names a loss is made of: the components of an expression, else the single canonical name."""
    if is_expression(loss_type):
        return list(parse_composite_expression(loss_type))
    return [resolve_name(loss_type)]


def get_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` with keyword parameters ``kwargs`` (validated).

    ``name`` may also be a composite expression such as ``"0.5*cross_entropy+0.5*dice"``; then ``kwargs``
    maps each component name to its own keyword dict.
    """
    if is_expression(name):
        return _build_composite_expression(name, kwargs)
    canonical = resolve_name(name)
    factory = _REGISTRY[canonical]
    check_kwargs(canonical, factory, kwargs)
    return factory(**kwargs)


def parse_composite_expression(expression: str) -> dict[str, float]:
    """``"0.5*cross_entropy + dice"`` -> ``{"cross_entropy": 0.5, "dice": 1.0}``."""
    weights: dict[str, float] = {}
    for term in expression.split("+"):
        match = _TERM.match(term)
        if match is None:
            raise ValueError(
                f"Cannot parse loss expression {expression!r} at {term.strip()!r}; "
                f"write a sum of weighted names such as '0.5*cross_entropy+0.5*dice'."
            )
        component = resolve_name(match["name"])
        if component in weights:
            raise ValueError(f"Loss expression {expression!r} names '{component}' twice.")
        weights[component] = float(match["weight"]) if match["weight"] else 1.0
    return weights


def _build_composite_expression(expression: str, kwargs: Mapping[str, Any]) -> nn.Module:
    weights = parse_composite_expression(expression)
    extra = {key: value for key, value in kwargs.items() if key not in weights}
    components = {}
    for component in weights:
        options = kwargs.get(component, {})
        if not isinstance(options, Mapping):
            raise TypeError(
                f"Loss expression {expression!r}: the options of '{component}' must be a dict, got {options!r}."
            )
        components[component] = dict(options)
    return get_loss("composite", components=components, weights=weights, **extra)


# ------------------------------------------------------------------------------------------ validation
def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    target = factory.__init__ if isinstance(factory, type) else factory
    parameters = dict(inspect.signature(target).parameters)
    parameters.pop("self", None)
    return parameters


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def check_kwargs(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Unknown keyword names and values of the wrong type raise, naming the loss and the allowed parameters."""
    parameters = _parameters(factory)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    allowed = [key for key, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    hints = _type_hints(factory)
    missing = [
        key
        for key, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and key not in kwargs
    ]
    if missing:
        raise TypeError(
            f"loss '{name}': missing required parameter(s) {', '.join(repr(m) for m in missing)}; "
            f"see describe_loss('{name}')."
        )
    for key, value in kwargs.items():
        if key not in parameters and not accepts_any:
            raise ValueError(
                f"loss '{name}': unknown parameter '{key}'.{did_you_mean(key, allowed)} "
                f"Allowed parameters: {', '.join(allowed) or '(none)'}."
            )
        if key in hints and not _matches(value, hints[key]):
            # a value of the right type outside a Literal's choices is a bad value, not a bad type
            error = ValueError if _literal_of_same_type(value, hints[key]) else TypeError
            raise error(
                f"loss '{name}': parameter '{key}' must be {_type_name(hints[key])}, "
                f"got {type(value).__name__} {value!r}."
            )


def _literal_of_same_type(value: Any, annotation: Any) -> bool:
    """True when ``annotation`` holds a ``Literal`` with a choice of ``value``'s type."""
    if typing.get_origin(annotation) is typing.Literal:
        return any(type(choice) is type(value) for choice in typing.get_args(annotation))
    return any(_literal_of_same_type(value, arg) for arg in typing.get_args(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    """Lenient runtime check of a value against a type annotation (ints pass for floats, lists for sequences)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence, typing.Sequence, __import__("collections.abc").abc.Sequence):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return all(_matches(item, inner) for item in value)
    if origin in (dict, Mapping, __import__("collections.abc").abc.Mapping):
        return isinstance(value, Mapping)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if annotation is Tensor:
        return "a Tensor"
    args = typing.get_args(annotation)
    if origin in (list, tuple, Sequence, typing.Sequence):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping, typing.Mapping):
        return f"dict of {_type_name(args[0])} to {_type_name(args[1])}" if len(args) == 2 else "dict"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and origin is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# ------------------------------------------------------------------------------------------ describe
@dataclass
class LossParameter:
    """One constructor parameter of a loss."""

    name: str
    type: str
    default: Any
    required: bool


@dataclass
class LossDescription:
    """What ``describe_loss`` returns: enough to use a loss without reading its code."""

    name: str
    summary: str
    reference: str
    item_unit: str
    decomposable: bool
    label_kind: str
    parameters: list[LossParameter] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.summary}"]
        if self.reference:
            lines.append(f"  reference: {self.reference}")
        lines.append(
            f"  averages over: {self.item_unit} ({'decomposable' if self.decomposable else 'batch statistics'});"
            f" labels: {self.label_kind}"
        )
        if self.aliases:
            lines.append(f"  aliases: {', '.join(self.aliases)}")
        lines.append("  parameters:")
        for p in self.parameters:
            default = "required" if p.required else f"default {p.default!r}"
            lines.append(f"    {p.name}: {p.type} ({default})")
        if not self.parameters:
            lines.append("    (none)")
        return "\n".join(lines)


def describe_loss(name: str) -> LossDescription:
    """Parameters (name, type, default), one-line summary and paper reference of a registered loss."""
    canonical = resolve_name(name)
    factory = _REGISTRY[canonical]
    hints = _type_hints(factory)
    parameters = []
    for key, p in _parameters(factory).items():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        annotation = hints.get(key, p.annotation)
        type_name = "any" if annotation is inspect.Parameter.empty else _type_name(annotation)
        required = p.default is inspect.Parameter.empty
        parameters.append(LossParameter(key, type_name, None if required else p.default, required))
    doc = inspect.getdoc(factory) or ""
    summary = getattr(factory, "summary", "") or (doc.splitlines()[0] if doc else "")
    return LossDescription(
        name=canonical,
        summary=summary,
        reference=getattr(factory, "reference", ""),
        item_unit=getattr(factory, "item_unit", "label"),
        decomposable=getattr(factory, "decomposable", True),
        label_kind=getattr(factory, "label_kind", "index"),
        parameters=parameters,
        aliases=sorted(alias for alias, target in _ALIASES.items() if target == canonical),
    )
