"""Run configurations: one dataclass of settings, read from YAML, checked key by key.

A :class:`Config` holds everything a training run needs: the model (the arguments of
:func:`pvae.build_vae`), the training, the data and where to write. YAML files hold any subset
of its keys (``examples/configs/*.yaml``); :func:`load_config` reads one, and
:meth:`Config.from_dict` checks every key and value: an unknown key, a value of the wrong type
or a setting that contradicts another is a ``ValueError`` that names the key. The effective
configuration of a run is saved next to its results (:func:`save_config`) and inside its
checkpoint, and loads back to the same :class:`Config`.

Example::

    >>> config = Config.from_dict({"prior": "mog", "z_dim": 8})
    >>> config.model_args(x_dim=784, image_shape=(1, 28, 28))["prior"]
    'mog'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pvae.data import DATASETS
from pvae.infer.objectives import OBJECTIVES
from pvae.infer.precision import check_precision
from pvae.models.guides import GUIDES
from pvae.models.hierarchical import check_hierarchy
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import ACTIVATIONS, NETWORKS
from pvae.models.priors import PRIORS
from pvae.models.registry import options_of

# Objectives that honour poutine.scale on a site, which the beta-VAE's KL weight relies on.
_SCALED_OBJECTIVES = ("elbo", "meanfield")


@dataclasses.dataclass
class Config:
    """The settings of one training run (defaults: the example's 784-400-20 Bernoulli VAE).

    Model: ``z_dim``, ``hidden_dims`` (fully connected widths), ``activation``, ``network``
    (``mlp``/``conv``), ``channels`` (conv), ``prior``, ``likelihood``, ``guide`` (names) with
    their ``*_options`` (keyword arguments of the chosen class), ``beta`` and
    ``warmup_epochs`` (beta-VAE), ``conditional`` (a VAE conditioned on the class label),
    ``adversarial`` with ``adversarial_weight`` and ``discriminator_dims`` (an adversarial
    autoencoder, not an ELBO model), ``hierarchy`` (latent sizes z1 first, the last equal to
    ``z_dim``: a VAE with that many stochastic layers, see :mod:`pvae.models.hierarchical`).
    Training: ``num_epochs``, ``learning_rate``, ``batch_size``, ``objective``,
    ``num_particles``, ``clip_norm``, ``seed``, ``precision`` (``float32``, ``tf32`` or
    ``bfloat16``; see :mod:`pvae.precision`). Evaluation and output: ``iwae_samples`` (K of
    the held-out IWAE bound), ``digit`` (the class a conditional VAE draws), ``dataset``,
    ``data_dir``, ``device``, ``out``.
    """

    z_dim: int = 20
    hidden_dims: list[int] = dataclasses.field(default_factory=lambda: [400])
    activation: str = "relu"
    network: str = "mlp"
    channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    prior: str = "standard_normal"
    prior_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    likelihood: str = "bernoulli"
    likelihood_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    guide: str = "gaussian"
    guide_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    beta: float = 1.0
    warmup_epochs: int = 0
    conditional: bool = False
    adversarial: bool = False
    adversarial_weight: float = 1.0
    discriminator_dims: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    hierarchy: list[int] | None = None
    num_epochs: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 128
    objective: str = "elbo"
    num_particles: int = 1
    clip_norm: float | None = None
    seed: int = 0
    precision: str = "float32"
    iwae_samples: int = 1000
    digit: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    device: str = "auto"
    out: str = "runs/mnist_svi"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> Config:
        """Check every key and value of ``values``; missing keys take their defaults.

        ``source`` (e.g. the file's name) goes into error messages.

        Example::

            >>> Config.from_dict({"z_dim": "twenty"})
            Traceback (most recent call last):
            ...
            ValueError: config key 'z_dim' must be an integer, got 'twenty' (str)
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{source} must be a mapping of settings (key: value), got {type(values).__name__}"
            )
        hints = typing.get_type_hints(cls)
        fields = [field.name for field in dataclasses.fields(cls)]
        checked = {}
        for key, value in values.items():
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown config key {key!r} in {source}{hint}; valid keys: {', '.join(fields)}"
                )
            checked[key] = _check_type(key, value, hints[key])
        config = cls(**checked)
        config._check_values()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML- and JSON-able), every key present."""
        return dataclasses.asdict(self)

    def model_args(self, x_dim: int, image_shape=None, num_classes: int = 10) -> dict[str, Any]:
        """The :func:`pvae.build_vae` arguments for data of ``x_dim`` values per datapoint."""
        args = dict(
            x_dim=x_dim,
            z_dim=self.z_dim,
            hidden_dims=list(self.hidden_dims),
            activation=self.activation,
            prior=self.prior,
            likelihood=self.likelihood,
            guide=self.guide,
            network=self.network,
            image_shape=list(image_shape) if image_shape is not None else None,
            channels=list(self.channels),
            prior_options=dict(self.prior_options),
            likelihood_options=dict(self.likelihood_options),
            guide_options=dict(self.guide_options),
            beta=self.beta,
            warmup_epochs=self.warmup_epochs,
            num_classes=num_classes if self.conditional else 0,
        )
        if self.adversarial:
            args.update(
                adversarial=True,
                adversarial_weight=self.adversarial_weight,
                discriminator_dims=list(self.discriminator_dims),
            )
        if self.hierarchy is not None:  # only then a key: other model_args stay as they were
            args["hierarchy"] = list(self.hierarchy)
        return args

    def _check_values(self) -> None:
        names = {
            "activation": ACTIVATIONS,
            "network": NETWORKS,
            "prior": PRIORS,
            "likelihood": LIKELIHOODS,
            "guide": GUIDES,
            "objective": OBJECTIVES,
            "dataset": DATASETS,
        }
        for key, valid in names.items():
            if getattr(self, key) not in valid:
                raise ValueError(
                    f"config key {key!r}: unknown {key} {getattr(self, key)!r}: choose one of "
                    f"{', '.join(valid)}"
                )
        for key in ("prior", "likelihood", "guide"):
            registry = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}[key]
            cls = registry[getattr(self, key)]
            required = {"z_dim", "encoder", "x_dim"}
            offered = [option for option in options_of(cls) if option not in required]
            for option in getattr(self, f"{key}_options"):
                if option not in offered:
                    raise ValueError(
                        f"config key '{key}_options': {key} {getattr(self, key)!r} has no "
                        f"option {option!r} (its options: {', '.join(offered) or 'none'})"
                    )
        positive = ["z_dim", "batch_size", "num_particles", "iwae_samples"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("num_epochs", "warmup_epochs", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be an integer ≥ 0, got {getattr(self, key)}")
        for key in ("hidden_dims", "channels", "discriminator_dims"):
            if any(width < 1 for width in getattr(self, key)):
                raise ValueError(f"{key} must be positive widths, got {getattr(self, key)}")
        for key in ("learning_rate", "beta", "clip_norm", "adversarial_weight"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a positive number, got {value}")
        check_precision(self.precision)
        if self.hierarchy is not None:
            check_hierarchy(self.model_args(x_dim=1))
            if self.objective == "meanfield":  # Pyro only warns
                raise ValueError(
                    "objective 'meanfield' is not the ELBO of a hierarchical VAE: it takes "
                    "KL(q(z1|x) || p(z1|z2)) in closed form at a z2 drawn given z1; use 'elbo'"
                )
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Settings that are fine alone but contradict each other."""
        if self.adversarial:
            conflicts = {
                "guide": self.guide != "gaussian",
                "beta": self.beta != 1,
                "warmup_epochs": self.warmup_epochs > 0,
                "conditional": self.conditional,
                "objective": self.objective != "elbo",
            }
            for key, conflict in conflicts.items():
                if conflict:
                    raise ValueError(
                        f"adversarial: true contradicts {key} = {getattr(self, key)!r}: the "
                        "adversarial autoencoder has a deterministic encoder, no KL term, no "
                        "labels, and trains with objective 'elbo'"
                    )
        if (self.beta != 1 or self.warmup_epochs > 0) and self.objective not in _SCALED_OBJECTIVES:
            raise ValueError(
                f"beta = {self.beta:g} / warmup_epochs = {self.warmup_epochs} weight the KL "
                f"term, which objective {self.objective!r} ignores: use objective "
                f"{' or '.join(_SCALED_OBJECTIVES)}, or beta 1 and warmup_epochs 0"
            )
        if self.digit is not None and not self.conditional:
            raise ValueError(
                f"digit = {self.digit} draws a chosen class, which needs a conditional VAE: "
                "set conditional: true (--conditional)"
            )
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise ValueError(f"digit must be a class label in 0..9, got {self.digit}")
        if self.conditional and self.prior == "vamp":
            raise ValueError(
                "prior 'vamp' pushes pseudo-inputs through the encoder, which a conditional "
                "VAE's encoder cannot take without a label: use another prior or conditional: "
                "false"
            )


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        item = typing.get_args(annotation)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(
            item, "values"
        )
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, "null" if annotation is type(None) else str(annotation)
    )


def _matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_type(key: str, value, annotation):
    if not _matches(value, annotation):
        raise ValueError(
            f"config key {key!r} must be {_type_name(annotation)}, got {value!r} "
            f"({type(value).__name__})"
        )
    if annotation is float and isinstance(value, int):
        return float(value)
    return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; this loader reads it as the number it means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "the text") -> Any:
    """Parse YAML text (safely: plain data only), with a one-line error on bad syntax.

    Example::

        >>> parse_yaml("learning_rate: 1e-3")
        {'learning_rate': 0.001}
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{source} is not valid YAML{where}: {problem}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (unchecked; an empty file is ``{}``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error.strerror or error}") from None
    values = parse_yaml(text, f"config file {path}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings (key: value), got "
            f"{type(values).__name__}"
        )
    return values


def load_config(path: str | Path, **overrides: Any) -> Config:
    """Read a YAML config file; ``overrides`` (e.g. from command-line flags) win over it.

    Example::

        >>> load_config("examples/configs/beta_vae.yaml", num_epochs=2).beta  # doctest: +SKIP
        4.0
    """
    values = {**read_config_file(path), **overrides}
    return Config.from_dict(values, source=f"config file {path}")


def save_config(config: Config, path: str | Path) -> Path:
    """Write the configuration as YAML (every key), so that ``load_config`` gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
