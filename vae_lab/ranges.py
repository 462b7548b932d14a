"""The allowed values of a setting, declared once, beside the parameter they constrain.

A class that the config builds (through ``_target_``) or a settings dataclass declares the range or the
choices of a parameter in its annotation, with ``typing.Annotated`` (PEP 593)::

    @checked("prior")
    def __init__(self, latent_dim: int, n_components: Annotated[int, at_least(1, "mixture components")] = 10): ...

That one declaration is read twice: by :func:`checked` (or :func:`check_fields` for a dataclass), which
refuses a bad argument when the object is built, naming the setting (``prior.n_components=0 must be a whole
number >= 1 (mixture components).``); and by the config check of :mod:`vae_lab.run.settings`, which reads
the class's signature and lists every bad value of a composed config before any data is read. No range
accepts NaN or an infinity.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vae_lab.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A constraint on one value: ``holds(value)``, a description of what is ``allowed``, and why (optional).

    ``checks_type``: ``holds`` also checks the value's type (a whole number where a float would fit the
    annotation), so the config check applies the rule instead of the annotation's type. ``choices``: the
    values of a choice rule, named ``noun`` in the refusal (``is not a scale mode``).
    """

    allowed: str
    holds: Callable[[Any], bool]
    why: str = ""
    checks_type: bool = False
    choices: tuple[Any, ...] | None = None
    noun: str = ""

    def refusal(self, path: str, value: Any, whole_number: bool = False) -> str:
        """The message of a constructor that refuses ``value`` for the setting at ``path``."""
        if self.choices is not None:
            what = f"is not {self.noun}" if self.noun else "is unknown"
            return f"{path}={value!r} {what}; use one of {', '.join(map(str, self.choices))}."
        allowed = f"a whole number {self.allowed}" if whole_number and not self.checks_type else self.allowed
        return f"{path}={value!r} must be {allowed}{f' ({self.why})' if self.why else ''}."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number that is not NaN or an infinity: every range asks for one (``optimizer.lr=inf`` is > 0, but
    no run can use it)."""
    return is_number(value) and math.isfinite(value)


def at_least(low: float, why: str = "") -> Rule:
    return Rule(f">= {low}", lambda value: is_finite_number(value) and value >= low, why)


def greater_than(low: float, why: str = "") -> Rule:
    return Rule(f"> {low}", lambda value: is_finite_number(value) and value > low, why)


def whole_number_at_least(low: int, why: str = "") -> Rule:
    """An int >= ``low`` (a count of steps or epochs: 2.5 is refused as out of range, not as a wrong type)."""
    return Rule(
        f"a whole number >= {low}",
        lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low,
        why,
        checks_type=True,
    )


def in_interval(low: float, high: float, why: str = "", *, high_open: bool = False) -> Rule:
    closing = ")" if high_open else "]"
    return Rule(
        f"in [{low}, {high}{closing}",
        lambda value: is_finite_number(value) and low <= value and (value < high if high_open else value <= high),
        why,
    )


#: A seed of torch's and numpy's generators.
SEED = in_interval(0, 2**32 - 1)


def at_least_or(low: float, special: Any, meaning: str) -> Rule:
    return Rule(f">= {low}, or {special} ({meaning})", lambda value: value == special or at_least(low).holds(value))


def one_of(choices: Iterable[Any], noun: str = "") -> Rule:
    """One of ``choices`` (refused as ``is not <noun>`` when a noun is given, else ``is unknown``)."""
    choices = tuple(choices)
    return Rule(
        "one of " + ", ".join(map(str, choices)),
        lambda value: any(value == choice and type(value) is type(choice) for choice in choices),
        choices=choices,
        noun=noun,
    )


def each(rule: Rule, *, non_empty: bool = True) -> Rule:
    """Every item of a list satisfies ``rule`` (and the list is not empty)."""
    return Rule(
        f"{'a non-empty ' if non_empty else 'a '}list, each item {rule.allowed}",
        lambda value: (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and (len(value) > 0 or not non_empty)
            and all(rule.holds(item) for item in value)
        ),
    )


# ---------------------------------------------------------------------------------------- reading declarations
def declared_rules(annotation: Any) -> list[Rule]:
    """The rules an annotation declares (``Annotated[T, rule, ...]``, also inside ``... | None``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return [item for item in annotation.__metadata__ if isinstance(item, Rule)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [rule for argument in typing.get_args(annotation) for rule in declared_rules(argument)]
    return []


def _alternatives(annotation: Any) -> list[Any]:
    """The types an annotation allows, without their ``Annotated`` metadata (``int | None``: int, NoneType)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [base for argument in typing.get_args(annotation) for base in _alternatives(argument)]
    return [annotation]


def _allows_none(annotation: Any) -> bool:
    return any(base in (None, type(None), Any, inspect.Parameter.empty) for base in _alternatives(annotation))


def _is_whole_number_type(annotation: Any) -> bool:
    bases = _alternatives(annotation)
    return int in bases and float not in bases


def annotations_of(factory: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations, with their ``Annotated`` metadata, of a class's ``__init__``, a
    dataclass's fields, or a function."""
    target = factory.__init__ if isinstance(factory, type) and not dataclasses.is_dataclass(factory) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # a forward reference that cannot be resolved: nothing is declared there
        return {}


def refusal(path: str, value: Any, annotation: Any) -> str | None:
    """Why ``value`` is refused for the setting at ``path`` by the rules its annotation declares, or None."""
    if value is None and _allows_none(annotation):
        return None
    whole_number = _is_whole_number_type(annotation)
    for rule in declared_rules(annotation):
        fits_type = rule.checks_type or rule.choices is not None or not whole_number
        fits_type = fits_type or (isinstance(value, int) and not isinstance(value, bool))
        if not (fits_type and rule.holds(value)):
            return rule.refusal(path, value, whole_number)
    return None


def check_values(section: str, values: dict[str, Any], annotations: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first value that its declared rules refuse."""
    prefix = f"{section}." if section else ""
    for name, value in values.items():
        message = refusal(f"{prefix}{name}", value, annotations.get(name))
        if message is not None:
            raise ConfigError(message)


def checked(section: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an ``__init__`` so that its arguments are checked against the rules their annotations
    declare, naming each as ``<section>.<parameter>`` (``section``: the config group, ``prior``)."""

    def decorate(init: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(init)
        annotations: dict[str, Any] | None = None

        @functools.wraps(init)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            nonlocal annotations
            if annotations is None:  # resolved on first use: the annotations name classes defined later
                annotations = annotations_of(init)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check_values(
                section, {name: bound.arguments[name] for name in annotations if name in bound.arguments}, annotations
            )
            init(*args, **kwargs)

        return wrapper

    return decorate


def check_fields(settings: Any, section: str = "") -> None:
    """Check a dataclass's fields against the rules their annotations declare (call it in ``__post_init__``)."""
    annotations = annotations_of(type(settings))
    values = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
    check_values(section, values, annotations)


__all__ = [
    "SEED",
    "Rule",
    "annotations_of",
    "at_least",
    "at_least_or",
    "check_fields",
    "checked",
    "declared_rules",
    "each",
    "greater_than",
    "in_interval",
    "is_finite_number",
    "is_number",
    "one_of",
    "refusal",
    "whole_number_at_least",
]
