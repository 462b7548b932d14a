"""Validate a composed config before any work starts: every key, type and range.

A run that dies at 3 a.m. on ``objective.n_samples=0`` has wasted the evening; this module refuses
such a config at start-up, before the data are loaded, with one message that lists every problem
as ``field=value: what is allowed``.

Where each rule lives (one place each):

- A section with a ``_target_`` (``data``, ``likelihood``, ``prior``, ``posterior``, ``model.encoder``,
  ``objective``, ``trainer``, ``optimizer``, ...) is checked against the ``__init__`` signature of
  its class: an unknown key is refused with the valid ones (and the closest match); a value whose
  type does not fit the parameter's annotation is refused; a key the code supplies itself (the
  image shape, the data form, ...) is refused when set in the config. The ranges and choices of
  vae_lab's own classes are declared in their signatures (``Annotated[int, at_least(1)]``,
  :mod:`vae_lab.ranges`), where their constructors check them too: a new likelihood, prior or
  objective is checked from its signature with no change here.
- A section without ``_target_`` (the top level, ``model``, ``eval``, ``logger``, ...) is checked
  against a dataclass (its fields are its parameters, their annotations declare the ranges), and so
  is a mapping that a class types as a dataclass (``objective.warmup``: ``KLWarmup``).
- :data:`RULES` holds the ranges of the classes vae_lab does not own (``lightning.Trainer``,
  ``torch.optim``) and of ``logger``, keyed by the field's dotted path (``fnmatch`` patterns); a rule
  for an exact path replaces the rules its class declares (``eval.n_importance_samples`` may be 0 in a
  run: no evaluation). No range accepts NaN or an infinity; tests/test_settings_checks.py proves that
  each declared rule fires.
- The entries of ``callbacks`` and the other entries of ``logger`` (:data:`ENTRY_SECTIONS`) are Lightning
  callbacks and loggers by name: null, or a ``_target_`` that imports, names a Callback (Logger), and takes
  the entry's other keys.
- :data:`CROSS_CHECKS` are checks that involve several fields (a batch larger than the data).
- ``python -m vae_lab.evaluate``'s settings: :class:`EvaluateSettings`, the evaluation's own settings
  (:class:`~vae_lab.evaluation.importance_sampling.EvaluationSettings`) and where to find the run.

What depends on the machine (its devices, its memory) is checked next by :mod:`vae_lab.run.machine_checks`.

To extend it: declare a new parameter's range in its class's signature; add a field to a dataclass
below for a new plain key (for example a new top-level setting), a field to ``EvaluationSettings`` and its line
to conf/eval/default.yaml for a new evaluation setting (of a run's ``eval`` block and of
``python -m vae_lab.evaluate`` both), or an entry to :data:`SUPPLIED_BY_CODE` for a new argument that
``vae_lab.model.build`` passes to a class.
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
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.evaluation.gradient_snr import GradientSNRSettings
from vae_lab.evaluation.importance_sampling import EvaluationSettings
from vae_lab.ranges import (
    SEED,
    Rule,
    annotations_of,
    at_least,
    at_least_or,
    declared_rules,
    greater_than,
    in_interval,
    is_number,
    one_of,
)

#: Ranges and choices of the classes vae_lab does not own, keyed by the dotted path of a field
#: (``fnmatch`` patterns). A rule is not applied to ``None`` when the field's type allows ``None``.
#: Fields that do not exist are ignored, so a rule may name a field that only some choices have.
RULES: dict[str, Rule] = {
    # A run's end-of-training evaluation may be switched off (k = 0); vae_lab.evaluate needs k >= 1.
    "callbacks.early_stopping.patience": at_least(1),
    "eval.n_importance_samples": at_least(0),
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

#: torch CPU threads (``threads`` of a run and of ``vae_lab.evaluate``).
Threads = Annotated[int | str | None, at_least_or(1, "auto", "1 or all cores by model size, vae_lab/run/threads.py")]


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
    latent_dim: Annotated[int, at_least(1)]
    encoder: Target
    decoder: Target
    initialize_output_bias: Annotated[bool | str, one_of((True, False, "auto"))] = "auto"


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
    seed: Annotated[int, SEED] = 0
    threads: Threads = "auto"
    #: torch.compile the encoder and decoder: true (inductor), false, an inductor mode or a backend name.
    compile: bool | str = False
    resume: bool = False
    check_finite_every_n_steps: Annotated[int, at_least(0)] = 1
    lr_scheduler: Target | None = None
    #: Which of an experiment's ``schedules`` to run (conf/experiment/*.yaml).
    schedule: Annotated[str, one_of(("full", "short"))] = "full"
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
    if origin is typing.Annotated:
        return _type_name(arguments[0])
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
    fits = _fits_plain(value, annotation)
    if fits is None:
        fits = _fits_collection(value, annotation, origin, arguments)
    if fits is not None:
        return fits
    if isinstance(annotation, str):
        return True  # an annotation that could not be resolved: nothing to check
    # Any other class (nn.Module, Accelerator) or a callable: only a nested _target_ can build one.
    if isinstance(value, dict) and "_target_" in value:
        return True
    return not (isinstance(annotation, type) or origin is Callable or annotation is Callable)


def _fits_plain(value: Any, annotation: Any) -> bool | None:
    """``_fits`` for the annotations of a single config value (None, a section, a scalar, a path, an
    enum); None when the annotation is none of those."""
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
        return is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (os.PathLike,) or (isinstance(annotation, type) and annotation.__name__ in ("Path", "PurePath")):
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(value == member.value or value == member for member in annotation)
    return None


def _fits_collection(value: Any, annotation: Any, origin: Any, arguments: tuple[Any, ...]) -> bool | None:
    """``_fits`` for the sequence and mapping annotations (``origin``/``arguments`` are the annotation's
    typing origin and arguments); None when the annotation is neither."""
    sequence_types = (list, tuple, Sequence, typing.Sequence, Iterable, typing.Iterable)
    if origin in sequence_types or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return isinstance(value, dict) and "_target_" in value
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(map(_fits, value, arguments))
        return not arguments or all(_fits(item, arguments[0]) for item in value)
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        return isinstance(value, dict)
    return None


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The named keyword parameters of a class's ``__init__`` (or a dataclass), and their resolved
    annotations with the rules they declare (unresolvable ones are left as strings)."""
    signature = inspect.signature(factory)
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name != "self"
    }
    hints = annotations_of(factory)
    annotations = {name: hints.get(name, parameter.annotation) for name, parameter in parameters.items()}
    return parameters, annotations


def _allows_none(annotation: Any) -> bool:
    return annotation in (Any, inspect.Parameter.empty) or _fits(None, annotation)


class _Checker:
    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = rules
        self.problems: list[Problem] = []
        #: The rules declared by the classes and dataclasses seen, by the dotted path of their field.
        self.declared: dict[str, list[Rule]] = {}

    def add(self, path: str, value: Any, message: str) -> None:
        self.problems.append(Problem(path, value, message))

    def rules_for(self, path: str, annotation: Any) -> list[Rule]:
        """The rules of a field: those its annotation declares and the matching :data:`RULES`; a rule of
        :data:`RULES` for this exact path replaces the declared ones."""
        if path in self.rules:
            return [self.rules[path]]
        return declared_rules(annotation) + [
            rule for pattern, rule in self.rules.items() if fnmatch.fnmatchcase(path, pattern)
        ]

    def declare(self, prefix: str, annotations: Mapping[str, Any], values: Any) -> None:
        """Note the declared rules of a section's fields, and of the dataclasses nested in it (set or not)."""
        for name, annotation in annotations.items():
            if declared_rules(annotation):
                self.declared[f"{prefix}{name}"] = declared_rules(annotation)
            nested = _dataclass_in(annotation)
            value = values.get(name) if isinstance(values, dict) else None
            if nested is not None and not (isinstance(value, dict) and "_target_" in value):
                self.declare(f"{prefix}{name}.", _parameters(nested)[1], value)

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
        self.declare(prefix, {name: annotations[name] for name in parameters if name not in supplied}, values)
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
        rules = self.rules_for(path, annotation)
        # A rule that checks the type itself (a whole number) is the check of an out-of-range 2.5.
        if not any(rule.checks_type for rule in rules) and not _fits(value, annotation):
            self.add(path, value, f"has the wrong type ({type(value).__name__}); expected {_type_name(annotation)}.")
            return
        if isinstance(value, dict):
            nested = _dataclass_in(annotation)
            if "_target_" in value or nested is not None:
                self.section(path, value, nested)
            else:  # a plain mapping (schedules, callbacks): its values get the rules of their paths
                for key, item in value.items():
                    self.value(f"{path}.{key}", item, Any)
            return
        if value is None and _allows_none(annotation):
            return
        for rule in rules:
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
    """The dataclass an annotation names (``Settings``, ``Settings | None``, ``Settings | Mapping``), else None."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(filter(None, map(_dataclass_in, typing.get_args(annotation))), None)
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
    if not isinstance(total, int) or not all(is_number(v) for v in (val_size, batch_size)):
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
    if is_number(subset) and subset >= 1:
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
def _checked(
    cfg: DictConfig | Mapping[str, Any], schema: Any, rules: Mapping[str, Rule] | None
) -> tuple[_Checker, Any]:
    """The checker after checking the config against ``schema``, and the resolved config (None when it
    does not resolve)."""
    checker = _Checker(RULES if rules is None else rules)
    if isinstance(cfg, DictConfig):
        try:
            config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as error:  # an interpolation that does not resolve
            checker.add(getattr(error, "full_key", "") or "config", _ABSENT, f"cannot be resolved: {error}")
            return checker, None
    else:
        config = dict(cfg)
    checker.section("", config, RunSettings if schema is None else schema)
    return checker, config


def find_problems(
    cfg: DictConfig | Mapping[str, Any],
    schema: Any = None,
    rules: Mapping[str, Rule] | None = None,
    cross_checks: Sequence[Callable[[dict], list[Problem]]] | None = None,
) -> list[Problem]:
    """Every problem in a composed config (empty when it is valid): by default a run's config
    (:class:`RunSettings`, :data:`RULES`, :data:`CROSS_CHECKS`)."""
    checker, config = _checked(cfg, schema, rules)
    if config is not None and not checker.problems:
        for check in CROSS_CHECKS if cross_checks is None else cross_checks:
            checker.problems += check(config)
    return checker.problems


def declared_rules_of(
    cfg: DictConfig | Mapping[str, Any], schema: Any = None, rules: Mapping[str, Rule] | None = None
) -> dict[str, list[Rule]]:
    """The rules that the classes and dataclasses of a config declare, by the dotted path of their field
    (the classes its ``_target_`` sections name, and the dataclasses of its plain sections)."""
    return _checked(cfg, schema, rules)[0].declared


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
@dataclass(frozen=True)
class EvaluateSettings(EvaluationSettings):
    """conf/evaluate.yaml, the settings of ``python -m vae_lab.evaluate``: which run to evaluate and on
    what, and the evaluation's own settings (:class:`EvaluationSettings`: a new one is a field there)."""

    run_dir: str | None = None
    checkpoint: str | None = None
    #: Seed of the importance-sampling noise; None takes the run's eval.seed, else the run's seed.
    seed: Annotated[int | None, SEED] = None
    device: str = "auto"
    threads: Threads = None
    data_root: str | None = None
    #: Update the training run's wandb record (vae_lab.tracking.wandb_run.record_evaluation).
    wandb: bool = True

    def __post_init__(self) -> None:  # a schema only: the evaluation's settings are built from it
        pass


def validate_evaluate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """:func:`validate_config` for the config of ``python -m vae_lab.evaluate``: unknown keys (with the
    closest match), types and ranges, all listed at once."""
    raise_problems(
        find_problems(cfg, EvaluateSettings, {}, cross_checks=()),
        "the evaluation's settings",
        "Fix the override (`python -m vae_lab.evaluate --cfg job` prints the settings; "
        "conf/evaluate.yaml documents them).",
    )


__all__ = [
    "CROSS_CHECKS",
    "ENTRY_SECTIONS",
    "RULES",
    "SUPPLIED_BY_CODE",
    "EvaluateSettings",
    "Problem",
    "Rule",
    "closest_importable",
    "declared_rules_of",
    "find_problems",
    "raise_problems",
    "validate_config",
    "validate_evaluate_config",
]
