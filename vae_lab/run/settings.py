"""Validate a composed config before any work starts: every key, type and range.

A run that dies at 3 a.m. on ``objective.n_samples=0`` has wasted the evening; this module refuses
such a config at start-up, before the data are loaded, with one message that lists every problem
as ``field=value: what is allowed``.

How a section is checked:

- A section with a ``_target_`` (``data``, ``likelihood``, ``prior``, ``model.encoder``,
  ``objective``, ``trainer``, ``optimizer``, ...) is checked against the ``__init__`` signature of
  its class: an unknown key is refused with the valid ones (and the closest match); a value whose
  type does not fit the parameter's annotation is refused; a key the code supplies itself (the
  image shape, the data form, ...) is refused when set in the config. A new likelihood, prior or
  objective is therefore checked from its signature with no change here.
- A section without ``_target_`` (the top level, ``model``, ``logger``, ``logger.wandb``) is
  checked against a dataclass below, the same way (its fields are its parameters).
- The entries of ``callbacks`` and the other entries of ``logger`` (:data:`ENTRY_SECTIONS`) are Lightning
  callbacks and loggers by name: null, or a ``_target_`` that imports, names a Callback (Logger), and takes
  the entry's other keys.
- A plain mapping that a class takes as one argument (``objective.warmup``, ``objective.capacity``)
  has its keys checked against :data:`MAPPING_KEYS` and its values against :data:`RULES`.
- :data:`RULES` adds the ranges and choices no annotation expresses (``objective.n_samples >= 1``,
  ``data.binarization`` one of ...), keyed by the field's dotted path (``fnmatch`` patterns). No
  range accepts NaN or an infinity. tests/test_settings_checks.py proves that each rule fires.
  A class may also annotate a parameter with ``typing.Literal[...]``: that is a choice, checked.
- :data:`CROSS_CHECKS` are checks that involve several fields (a batch larger than the data).
- ``python -m vae_lab.evaluate``'s settings: :class:`EvaluateSettings` and :data:`EVALUATE_RULES`.

What depends on the machine (its devices, its memory) is checked next by :mod:`vae_lab.run.machine_checks`.

To extend it: add a rule to :data:`RULES` for a new field's range, a field to a dataclass for a new
plain key (for example a new top-level setting), or an entry to :data:`SUPPLIED_BY_CODE` for a new
argument that ``vae_lab.model.build`` passes to a class.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import inspect
import math
import os
import pkgutil
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.evaluation.decompositions import InferenceGapSettings, SurgerySettings
from vae_lab.evaluation.gradient_snr import GradientSNRSettings
from vae_lab.evaluation.importance_sampling import EvaluationSettings


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """A constraint on one value: ``holds(value)`` and a description of what is ``allowed``."""

    allowed: str
    holds: Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A number that is not NaN or an infinity: every range below asks for one (``optimizer.lr=inf`` is > 0,
    but no run can use it)."""
    return _is_number(value) and math.isfinite(value)


def at_least(low: float) -> Rule:
    return Rule(f">= {low}", lambda value: _is_finite_number(value) and value >= low)


def greater_than(low: float) -> Rule:
    return Rule(f"> {low}", lambda value: _is_finite_number(value) and value > low)


def whole_number_at_least(low: int) -> Rule:
    """An int >= ``low`` (a count of steps or epochs: 2.5 is refused even where the annotation says Any)."""
    return Rule(
        f"a whole number >= {low}",
        lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low,
    )


def in_interval(low: float, high: float, *, high_open: bool = False) -> Rule:
    closing = ")" if high_open else "]"
    return Rule(
        f"in [{low}, {high}{closing}",
        lambda value: _is_finite_number(value) and low <= value and (value < high if high_open else value <= high),
    )


def at_least_or(low: float, special: Any, meaning: str) -> Rule:
    return Rule(f">= {low}, or {special} ({meaning})", lambda value: value == special or at_least(low).holds(value))


def one_of(choices: Iterable[Any]) -> Rule:
    choices = tuple(choices)
    return Rule("one of " + ", ".join(map(str, choices)), lambda value: value in choices)


def each(rule: Rule, *, non_empty: bool = True) -> Rule:
    """Every item of a list satisfies ``rule`` (and the list is not empty)."""
    return Rule(
        f"{'a non-empty ' if non_empty else 'a '}list, each item {rule.allowed}",
        lambda value: (
            isinstance(value, (list, tuple))
            and (len(value) > 0 or not non_empty)
            and all(rule.holds(item) for item in value)
        ),
    )


def _choices(module: str, name: str) -> Rule:
    """A choice rule from a tuple or dict of names defined in ``module`` (imported when checked)."""
    import importlib

    return one_of(getattr(importlib.import_module(module), name))


class _LazyRule(Rule):
    """A rule built on first use, so that its choices can live in a module that imports torch."""

    def __init__(self, make: Callable[[], Rule]) -> None:
        object.__setattr__(self, "_make", make)
        object.__setattr__(self, "_rule", None)

    def _built(self) -> Rule:
        if self._rule is None:
            object.__setattr__(self, "_rule", self._make())
        return self._rule

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return self._built().allowed

    @property
    def holds(self) -> Callable[[Any], bool]:  # type: ignore[override]
        return self._built().holds


def _lazy(make: Callable[[], Rule]) -> Rule:
    return _LazyRule(make)


#: Ranges and choices, keyed by the dotted path of a field (``fnmatch`` patterns). A rule is not
#: applied to ``None`` when the field's type allows ``None``. Fields that do not exist are ignored,
#: so a rule may name a field that only some choices of a group have.
RULES: dict[str, Rule] = {
    # top level
    "seed": in_interval(0, 2**32 - 1),
    "threads": at_least_or(1, "auto", "1 or all cores by model size, vae_lab/run/threads.py"),
    "check_finite_every_n_steps": at_least(0),
    "schedule": one_of(("full", "short")),
    "callbacks.early_stopping.patience": at_least(1),
    "eval.n_importance_samples": at_least(0),
    "eval.memory_budget_mb": greater_than(0),
    "eval.n_test_images": at_least(1),
    "eval.active_unit_threshold": at_least(0),
    "eval.images_per_batch": at_least(1),
    "eval.samples_per_chunk": at_least(1),
    "eval.seed": in_interval(0, 2**32 - 1),
    "eval.surgery.n_samples": at_least(0),
    "eval.inference_gap.n_images": at_least(0),
    "eval.inference_gap.steps": at_least(1),
    "eval.inference_gap.n_samples": at_least(1),
    "eval.inference_gap.images_per_batch": at_least(1),
    "eval.inference_gap.lr": greater_than(0),
    "model.initialize_output_bias": one_of((True, False, "auto")),
    # data
    "data.batch_size": at_least(1),
    "data.eval_batch_size": at_least(1),
    "data.val_size": at_least(1),
    "data.train_subset": at_least(1),
    "data.split_seed": at_least(0),
    "data.seed": at_least(0),
    "data.binarization": _lazy(lambda: _choices("vae_lab.data.base", "BINARIZATIONS")),
    "data.mirror": Rule(
        "a base URL, http://... or https://...", lambda url: str(url).startswith(("http://", "https://"))
    ),
    # likelihood: scales are standard deviations (Gaussian) or scales (Laplace), > 0
    "likelihood.variance": _lazy(lambda: _choices("vae_lab.model.likelihoods.gaussian", "VARIANCE_MODES")),
    "likelihood.scale": _lazy(lambda: _choices("vae_lab.model.likelihoods.location_scale", "SCALE_MODES")),
    "likelihood.*_sigma": greater_than(0),
    "likelihood.fixed_scale": greater_than(0),
    "likelihood.min_scale": greater_than(0),
    "likelihood.n_components": at_least(1),
    # prior
    "prior.n_components": at_least(1),
    "prior.n_pseudo_inputs": at_least(1),
    "prior.n_layers": at_least(1),
    "prior.hidden_size": at_least(1),
    # posterior
    "posterior.n_flows": at_least(1),
    "posterior.context_size": at_least(1),
    "posterior.hidden_size": at_least(1),
    "posterior.n_hidden_layers": at_least(1),
    # model
    "model.latent_dim": at_least(1),
    "model.*.hidden_sizes": each(at_least(1), non_empty=False),
    "model.*.channels": each(at_least(1)),
    "model.*.hidden_size": at_least(1),
    "model.*.activation": _lazy(lambda: _choices("vae_lab.model.networks.base", "ACTIVATIONS")),
    # objective
    "objective.n_samples": at_least(1),
    "objective.k": at_least(1),
    "objective.kl_weight": at_least(0),
    "objective.kl": _lazy(lambda: _choices("vae_lab.model.objectives.base", "KL_MODES")),
    "objective.free_bits": at_least(0),
    "objective.warmup.*": whole_number_at_least(0),
    "objective.capacity.max": at_least(0),
    "objective.capacity.steps": whole_number_at_least(0),
    "objective.capacity.gamma": at_least(0),
    "objective.m": at_least(1),
    "objective.elbo_fraction": in_interval(0, 1),
    "objective.gradient": _lazy(lambda: _choices("vae_lab.model.objectives.estimators", "GRADIENTS")),
    "gradient_snr.epochs": each(at_least(0), non_empty=False),
    "gradient_snr.n_estimates": at_least(2),
    # optimizer (any torch.optim class)
    "optimizer.lr": greater_than(0),
    "optimizer.eps": greater_than(0),
    "optimizer.weight_decay": at_least(0),
    "optimizer.betas": Rule(
        "two numbers in [0, 1)",
        lambda value: (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(in_interval(0, 1, high_open=True).holds(beta) for beta in value)
        ),
    ),
    "optimizer.momentum": in_interval(0, 1, high_open=True),
    # trainer (lightning.Trainer)
    "trainer.max_epochs": at_least_or(1, -1, "no limit"),
    "trainer.min_epochs": at_least(0),
    "trainer.max_steps": at_least_or(1, -1, "no limit"),
    "trainer.num_nodes": at_least(1),
    "trainer.gradient_clip_val": at_least(0),
    "trainer.log_every_n_steps": at_least(1),
    "trainer.check_val_every_n_epoch": at_least(1),
    "trainer.accumulate_grad_batches": at_least(1),
    "trainer.limit_*_batches": greater_than(0),
    "trainer.num_sanity_val_steps": at_least(-1),
    "trainer.accelerator": one_of(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    "trainer.devices": Rule(
        ">= 1, 'auto', or a list of device indices",
        lambda value: (
            value == "auto"
            or (isinstance(value, str) and value.strip("-").isdigit())
            or (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1))
            or (isinstance(value, list) and all(isinstance(v, int) and v >= 0 for v in value))
        ),
    ),
    # logger
    "logger.wandb.mode": one_of(("auto", "online", "offline", "disabled", "dryrun")),
    "logger.wandb.init_timeout": greater_than(0),
    "logger.wandb.images_every_n_epochs": at_least(0),
}

#: The keys of a plain mapping that a class takes as one argument (annotated ``Mapping[str, Any]``): an
#: unknown key is refused as in a section, and each value gets the rules of its dotted path. A mapping
#: not listed here has its values checked against :data:`RULES` only.
MAPPING_KEYS: dict[str, tuple[str, ...]] = {
    "objective.warmup": ("steps", "epochs"),
    "objective.capacity": ("max", "steps", "gamma"),
}

#: Arguments that ``vae_lab.model.build`` (or train) passes to a class itself: they must not be in the config.
SUPPLIED_BY_CODE: dict[str, set[str]] = {
    "data": {"data_form"},
    "likelihood": {"channels"},
    "prior": {"latent_dim", "encoder", "datamodule", "decoder", "likelihood"},
    "model.encoder": {"image_shape", "latent_dim", "posterior"},
    "posterior": {"feature_size", "latent_dim"},
    "model.decoder": {"image_shape", "latent_dim", "out_channels"},
    "optimizer": {"params"},
    "lr_scheduler": {"optimizer"},
    "trainer": {"logger", "callbacks", "plugins", "default_root_dir"},
}


# ---------------------------------------------------------------------------------------- schemas
class Target:
    """Annotation of a section that must name a class in ``_target_`` (checked against its signature)."""


@dataclass
class WandbSettings:
    project: str = "vae_lab"
    entity: str | None = None
    mode: str = "auto"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    #: Seconds wandb.init may take before the run goes on without wandb.
    init_timeout: float = 60.0
    #: Reconstructions, samples and traversals to wandb every N epochs (0: only at the end).
    images_every_n_epochs: int = 5
    #: The best checkpoint as a wandb model Artifact.
    log_checkpoint: bool = False


@dataclass
class LoggerSettings:
    """``logger``: vae_lab's wandb logger (``wandb``), and any Lightning logger by name (:data:`ENTRY_SECTIONS`)."""

    wandb: WandbSettings | None = None


@dataclass
class CallbackSettings:
    """``callbacks``: Lightning callbacks by name, each a section with ``_target_`` (:data:`ENTRY_SECTIONS`)."""


#: Sections whose other entries are Lightning objects by name, built by Hydra (vae_lab.run.callbacks): each is null
#: (left out) or a section whose ``_target_`` names a subclass of this class, checked against its signature.
ENTRY_SECTIONS: dict[str, str] = {
    "callbacks": "lightning.pytorch.callbacks.Callback",
    "logger": "lightning.pytorch.loggers.Logger",
}


@dataclass
class ModelSettings:
    latent_dim: int
    encoder: Target
    decoder: Target
    initialize_output_bias: bool | str = "auto"


@dataclass
class RunSettings:
    """The top level of ``conf/config.yaml``."""

    data: Target
    likelihood: Target
    prior: Target
    model: ModelSettings
    objective: Target
    trainer: Target
    logger: LoggerSettings
    optimizer: Target
    #: The family of q(z|x) (vae_lab/posteriors); absent in configs from before the group: diagonal.
    posterior: Target | None = None
    seed: int = 0
    threads: int | str | None = "auto"
    #: torch.compile the encoder and decoder: true (inductor), false, an inductor mode or a backend name.
    compile: bool | str = False
    resume: bool = False
    check_finite_every_n_steps: int = 1
    lr_scheduler: Target | None = None
    #: Which of an experiment's ``schedules`` to run (conf/experiment/*.yaml).
    schedule: str = "full"
    schedules: dict[str, Any] | None = None
    eval: EvaluationSettings | None = None
    #: Lightning callbacks by name (``callbacks.learning_rate``); null removes one.
    callbacks: CallbackSettings | None = None
    gradient_snr: GradientSNRSettings | None = None


# ---------------------------------------------------------------------------------------- checking
@dataclass
class Problem:
    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "(missing)" if self.value is _ABSENT else f"={_show(self.value)}"
        return f"{self.path}{shown}: {self.message}"


_ABSENT = object()


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value == "" or " " in value else value
    if isinstance(value, dict) and "_target_" in value:
        return f"<{value['_target_']}>"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(annotation: Any) -> str:
    """A short, readable name for an annotation."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(argument) for argument in arguments))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(argument) for argument in arguments)
    if annotation is type(None):
        return "null"
    if annotation is Target:
        return "a section with _target_"
    if origin in (list, tuple, Sequence, Iterable, typing.Sequence) or annotation in (list, tuple):
        inner = f" of {_type_name(arguments[0])}" if arguments and arguments[0] is not Ellipsis else ""
        return f"a list{inner}"
    if origin in (dict, Mapping) or annotation is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a config value (str, int, float, bool, None, list, dict) fits an annotation.

    Annotations a config value cannot express (a module, a callable) accept a section with
    ``_target_`` and refuse plain values; anything unrecognised is accepted.
    """
    if annotation in (Any, inspect.Parameter.empty, object):
        return True
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return any(value == argument and type(value) is type(argument) for argument in arguments)
    if origin is typing.Annotated:
        return _fits(value, arguments[0])
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is Target:
        return isinstance(value, dict) and "_target_" in value
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (os.PathLike,) or (isinstance(annotation, type) and annotation.__name__ in ("Path", "PurePath")):
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(value == member.value or value == member for member in annotation)
    sequence_types = (list, tuple, Sequence, typing.Sequence, Iterable, typing.Iterable)
    if origin in sequence_types or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return isinstance(value, dict) and "_target_" in value
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(map(_fits, value, arguments))
        return not arguments or all(_fits(item, arguments[0]) for item in value)
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, str):
        return True  # an annotation that could not be resolved: nothing to check
    # Any other class (nn.Module, Accelerator) or a callable: only a nested _target_ can build one.
    if isinstance(value, dict) and "_target_" in value:
        return True
    return not (isinstance(annotation, type) or origin is Callable or annotation is Callable)


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The named keyword parameters of a class's ``__init__`` (or a dataclass), and their resolved
    annotations (unresolvable ones are left as strings)."""
    signature = inspect.signature(factory)
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name != "self"
    }
    target = factory.__init__ if isinstance(factory, type) and not dataclasses.is_dataclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # a forward reference that cannot be resolved: check types where we can
        hints = {}
    annotations = {name: hints.get(name, parameter.annotation) for name, parameter in parameters.items()}
    return parameters, annotations


def _rules_for(path: str, rules: Mapping[str, Rule]) -> list[Rule]:
    return [rule for pattern, rule in rules.items() if fnmatch.fnmatchcase(path, pattern)]


def _allows_none(annotation: Any) -> bool:
    return annotation in (Any, inspect.Parameter.empty) or _fits(None, annotation)


class _Checker:
    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = rules
        self.problems: list[Problem] = []

    def add(self, path: str, value: Any, message: str) -> None:
        self.problems.append(Problem(path, value, message))

    def section(self, path: str, values: Any, schema: Any) -> None:
        """Check ``values`` (a dict) against a class with ``_target_`` or a dataclass schema."""
        if not isinstance(values, dict):
            self.add(path or "config", values, f"must be a section (a mapping), not {type(values).__name__}")
            return
        if "_target_" in values:
            factory = self.target_class(path, values)
            if factory is None:
                return
            what = f"{values['_target_']}"
        elif dataclasses.is_dataclass(schema):
            factory, what = schema, f"the {path or 'top-level'} section"
        else:
            return
        parameters, annotations = _parameters(factory)
        supplied = SUPPLIED_BY_CODE.get(path, set())
        prefix = f"{path}." if path else ""
        for key, value in values.items():
            if key.startswith("_") and key.endswith("_"):
                continue  # Hydra's own keys (_target_, _partial_, _recursive_, ...)
            key_path = f"{prefix}{key}"
            if key in supplied:
                self.add(
                    key_path,
                    value,
                    f"is set by vae_lab itself for {what} (from the data and the other "
                    "groups); remove it from the config.",
                )
                continue
            if key not in parameters and path in ENTRY_SECTIONS:
                self.entry(key_path, value, ENTRY_SECTIONS[path])
                continue
            if key not in parameters:
                self.unknown(key_path, value, [name for name in parameters if name not in supplied], what)
                continue
            self.value(key_path, value, annotations[key])
        for name, parameter in parameters.items():
            if parameter.default is inspect.Parameter.empty and name not in values and name not in supplied:
                self.add(f"{prefix}{name}", _ABSENT, f"is required by {what} but not set.")

    def unknown(self, path: str, value: Any, valid: Iterable[str], what: str) -> None:
        """An unknown key: the valid ones, and the closest match."""
        valid = sorted(valid)
        close = difflib.get_close_matches(path.rsplit(".", 1)[-1], valid, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        listing = f"Valid keys: {', '.join(valid)}." if valid else "It takes no keys."
        self.add(path, value, f"unknown key for {what}.{hint} {listing}")

    def mapping(self, path: str, values: dict) -> None:
        """A plain mapping (no ``_target_``, no dataclass): its keys (:data:`MAPPING_KEYS`) and values."""
        known = MAPPING_KEYS.get(path)
        for key, item in values.items():
            if known is not None and key not in known:
                self.unknown(f"{path}.{key}", item, known, path)
            else:
                self.value(f"{path}.{key}", item, Any)

    def entry(self, path: str, value: Any, base: str) -> None:
        """A named entry of an :data:`ENTRY_SECTIONS` section: null, or a ``base`` subclass with its arguments."""
        if value is None:
            return
        what = base.rsplit(".", 1)[-1].lower()
        if not isinstance(value, dict) or "_target_" not in value:
            self.add(
                path, value, f"must name a Lightning {what} class in {path}._target_ (or be null, to leave it out)."
            )
            return
        factory = self.target_class(path, value)
        if factory is None:
            return
        if not (isinstance(factory, type) and issubclass(factory, import_object(base))):
            self.add(f"{path}._target_", value["_target_"], f"is not a Lightning {what} (a subclass of {base}).")
            return
        self.section(path, value, None)

    def target_class(self, path: str, values: dict) -> Any:
        target = values["_target_"]
        try:
            return import_object(target)
        except (ImportError, AttributeError, ValueError) as error:
            close = closest_importable(str(target))
            hint = f" Did you mean {close}?" if close else ""
            self.add(f"{path}._target_", target, f"cannot be imported ({error}).{hint}")
            return None

    def value(self, path: str, value: Any, annotation: Any) -> None:
        if value == "???":
            self.add(path, value, "is a mandatory value; set it on the command line.")
            return
        if not _fits(value, annotation):
            self.add(path, value, f"has the wrong type ({type(value).__name__}); expected {_type_name(annotation)}.")
            return
        if isinstance(value, dict):
            nested = _dataclass_in(annotation)
            if "_target_" in value or nested is not None:
                self.section(path, value, nested)
            else:
                self.mapping(path, value)
            return
        if value is None and _allows_none(annotation):
            return
        for rule in _rules_for(path, self.rules):
            if not rule.holds(value):
                finite = not isinstance(value, float) or math.isfinite(value)
                self.add(path, value, f"not allowed; must be {'' if finite else 'a finite number '}{rule.allowed}.")


def import_object(dotted_path: str) -> Any:
    """The object at ``package.module.Name`` (the longest importable module, then attributes)."""
    import importlib

    parts = dotted_path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as error:
            if error.name is None or not ".".join(parts[:split]).startswith(error.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"no module of {dotted_path!r} can be imported")


def closest_importable(dotted_path: str) -> str | None:
    """``dotted_path`` with its first name that does not exist replaced by the closest one that does
    (``lightning.pytorch.callback.LearningRateMonitor`` -> ``lightning.pytorch.callbacks.LearningRateMonitor``),
    or None when nothing is close."""
    parts = dotted_path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = import_object(".".join(parts[:split]))
        except Exception:  # not importable either: try a shorter prefix
            continue
        names = {name for name in dir(found) if not name.startswith("_")}
        if isinstance(found, types.ModuleType) and hasattr(found, "__path__"):
            names |= {module.name for module in pkgutil.iter_modules(found.__path__)}
        close = difflib.get_close_matches(parts[split], sorted(names), n=1)
        return ".".join([*parts[:split], close[0], *parts[split + 1 :]]) if close else None
    return None


def _dataclass_in(annotation: Any) -> Any:
    """The dataclass an annotation names (``Settings`` or ``Settings | None``), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for argument in typing.get_args(annotation):
        if dataclasses.is_dataclass(argument):
            return argument
    return None


# ---------------------------------------------------------------------------------------- cross checks
def _batch_fits_data(config: dict) -> list[Problem]:
    """The training batch must fit in the training split: refused before the data are loaded, from
    the number of training images the data module's class declares (``n_train_and_val``)."""
    data = config.get("data")
    if not isinstance(data, dict) or "_target_" not in data:
        return []
    try:
        total = getattr(import_object(data["_target_"]), "n_train_and_val", None)
    except (ImportError, AttributeError, ValueError):
        return []
    val_size, batch_size, subset = data.get("val_size"), data.get("batch_size"), data.get("train_subset")
    if not isinstance(total, int) or not all(_is_number(v) for v in (val_size, batch_size)):
        return []
    problems = []
    if val_size >= total:
        problems.append(
            Problem(
                "data.val_size",
                val_size,
                f"not allowed; must be < {total} (the data set has "
                f"{total} training images, and some must remain for training).",
            )
        )
        return problems
    n_train = total - val_size
    if _is_number(subset) and subset >= 1:
        n_train = min(n_train, int(subset))
    if batch_size > n_train:
        problems.append(
            Problem(
                "data.batch_size",
                batch_size,
                f"not allowed; must be <= {n_train}, the number of "
                "training images (data.train_subset and data.val_size decide it).",
            )
        )
    return problems


def _objective_refusals(config: dict) -> list[Problem]:
    """The objective's own refusals (a gradient estimator that does not apply to it, an option clash),
    from constructing it: objectives are cheap, pure and raise ConfigError for what they refuse."""
    objective = config.get("objective")
    if not isinstance(objective, dict) or "_target_" not in objective:
        return []
    try:
        factory = import_object(objective["_target_"])
    except (ImportError, AttributeError, ValueError):
        return []
    try:
        factory(**{key: value for key, value in objective.items() if key != "_target_"})
    except ConfigError as error:
        return [Problem("objective", objective.get("gradient", _ABSENT), str(error))]
    except Exception:  # reported by the signature checks, or at instantiation
        return []
    return []


def _posterior_fits_prior(config: dict) -> list[Problem]:
    """A posterior family the maths refuses with the prior (VampPrior x flow), with free bits
    (vae_lab.model.posteriors.pairing_problems) or with a gradient estimator (estimator_problems), refused
    before the data are loaded."""
    sections = [config.get(name) for name in ("posterior", "prior")]
    if not all(isinstance(section, dict) and "_target_" in section for section in sections):
        return []
    try:
        family, prior = (import_object(section["_target_"]) for section in sections)
    except (ImportError, AttributeError, ValueError):
        return []
    from vae_lab.model.posteriors import estimator_problems, pairing_problems

    objective = config.get("objective")
    objective = objective if isinstance(objective, dict) else {}
    problems = pairing_problems(family, prior, objective.get("free_bits") is not None)
    reweights_score = str(objective.get("_target_", "")).endswith(".PIWAE")
    problems += estimator_problems(family, str(objective.get("gradient", "reparameterization")), reweights_score)
    return [Problem("posterior", sections[0]["_target_"], problem) for problem in problems]


#: Checks across fields; each returns the problems it finds in the resolved config (a dict).
CROSS_CHECKS: list[Callable[[dict], list[Problem]]] = [_batch_fits_data, _objective_refusals, _posterior_fits_prior]


# ---------------------------------------------------------------------------------------- entry point
def find_problems(
    cfg: DictConfig | Mapping[str, Any],
    schema: Any = None,
    rules: Mapping[str, Rule] | None = None,
    cross_checks: Sequence[Callable[[dict], list[Problem]]] | None = None,
) -> list[Problem]:
    """Every problem in a composed config (empty when it is valid): by default a run's config
    (:class:`RunSettings`, :data:`RULES`, :data:`CROSS_CHECKS`)."""
    if isinstance(cfg, DictConfig):
        try:
            config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as error:  # an interpolation that does not resolve
            return [Problem(getattr(error, "full_key", "") or "config", _ABSENT, f"cannot be resolved: {error}")]
    else:
        config = dict(cfg)
    checker = _Checker(RULES if rules is None else rules)
    checker.section("", config, RunSettings if schema is None else schema)
    if not checker.problems:
        for check in CROSS_CHECKS if cross_checks is None else cross_checks:
            checker.problems += check(config)
    return checker.problems


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise one :class:`ConfigError` listing every problem of the config; return when it is valid."""
    raise_problems(find_problems(cfg))


def raise_problems(
    problems: Sequence[Problem],
    what: str = "the config",
    fix: str = "Fix the override or the yaml file (`python -m vae_lab.train --cfg job` prints the composed config).",
) -> None:
    """One :class:`ConfigError` listing every problem (``field=value: what is allowed``), if there are any."""
    if not problems:
        return
    listing = "\n".join(f"  - {problem}" for problem in problems)
    count = "a problem" if len(problems) == 1 else f"{len(problems)} problems"
    raise ConfigError(f"{what} has {count}; nothing was run:\n{listing}\n{fix}")


# ---------------------------------------------------------------------------------------- python -m vae_lab.evaluate
@dataclass
class EvaluateSettings:
    """conf/evaluate.yaml, the settings of ``python -m vae_lab.evaluate`` (add a field for a new key there)."""

    run_dir: str | None = None
    checkpoint: str | None = None
    n_importance_samples: int = 5000
    seed: int | None = None
    memory_budget_mb: float | None = None
    n_test_images: int | None = None
    active_unit_threshold: float = 0.01
    surgery: SurgerySettings | None = None
    inference_gap: InferenceGapSettings | None = None
    device: str = "auto"
    threads: int | str | None = None
    data_root: str | None = None
    #: Update the training run's wandb record (vae_lab.tracking.wandb_run.record_evaluation).
    wandb: bool = True


#: The ranges of :class:`EvaluateSettings`: those of the ``eval`` block of a run, except that k >= 1
#: (evaluating is what the command is for).
EVALUATE_RULES: dict[str, Rule] = {
    **{pattern.removeprefix("eval."): rule for pattern, rule in RULES.items() if pattern.startswith("eval.")},
    "n_importance_samples": at_least(1),
    "threads": RULES["threads"],
}


def validate_evaluate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """:func:`validate_config` for the config of ``python -m vae_lab.evaluate``: unknown keys (with the
    closest match), types and ranges, all listed at once."""
    raise_problems(
        find_problems(cfg, EvaluateSettings, EVALUATE_RULES, cross_checks=()),
        "the evaluation's settings",
        "Fix the override (`python -m vae_lab.evaluate --cfg job` prints the settings; conf/evaluate.yaml documents them).",
    )


__all__ = [
    "CROSS_CHECKS",
    "ENTRY_SECTIONS",
    "EVALUATE_RULES",
    "MAPPING_KEYS",
    "RULES",
    "SUPPLIED_BY_CODE",
    "EvaluateSettings",
    "Problem",
    "Rule",
    "closest_importable",
    "find_problems",
    "raise_problems",
    "validate_config",
    "validate_evaluate_config",
]
