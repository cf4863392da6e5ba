"""Run configurations: the example's settings, read from YAML, checked key by key.

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

import codecs
import dataclasses
import difflib
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pvae.data import DATASETS
from pvae.infer.settings import RENAMED, TRAIN_KEYS, TrainConfig, warn_renamed
from pvae.models.settings import ARCHITECTURE_KEYS, Architecture, ModelConfig

# Objectives that honour poutine.scale on a site, which the beta-VAE's KL weight relies on.
_SCALED_OBJECTIVES = ("elbo", "meanfield")
# K of the importance-weighted objectives when a run does not give num_particles.
_DEFAULT_PARTICLES = {"iwae": 5, "dreg": 5}
# The example's prior when a run names none: a VampPrior with this many pseudo-inputs.
_DEFAULT_VAMP_OPTIONS = {"num_components": 100}


# Config keys renamed so that one concept has one name (pvae's glossary); the old names work
# for one more release, with a DeprecationWarning.
RENAMED_KEYS = {**RENAMED, "iwae_samples": "num_samples"}


def renamed_settings(values: Mapping[str, Any], warn: bool) -> dict[str, Any]:
    """``values`` with the old names of settings (:data:`RENAMED_KEYS`) replaced by the new,
    with a ``DeprecationWarning`` when ``warn`` (a checkpoint's saved settings are read without).

    Example::

        >>> renamed_settings({"iwae_samples": 50}, warn=False)
        {'num_samples': 50}
    """
    renamed = {}
    for key, value in values.items():
        new = RENAMED_KEYS.get(key) if isinstance(key, str) else None
        if new is None:
            renamed[key] = value
            continue
        if new in values:
            raise ValueError(f"config keys {key!r} and {new!r} are one setting: give {new!r} only")
        if warn:
            warn_renamed(key, new, stacklevel=5)
        renamed[new] = value
    return renamed


@dataclasses.dataclass(kw_only=True)
class Config(TrainConfig, Architecture):
    """The settings of one run of the example (defaults: its 784-400-50 Bernoulli VAE with a
    VampPrior of 100 pseudo-inputs, DReG-5).

    Model: the fields of :class:`pvae.models.settings.Architecture` (``z_dim``,
    ``hidden_dims``, ``prior``, ``likelihood``, ``guide``, ...) and ``conditional`` (a VAE
    conditioned on the class label). Training: the fields of
    :class:`pvae.infer.settings.TrainConfig` (``num_epochs``, ``learning_rate``,
    ``batch_size``, ``objective``, ...), with the example's latent size, objective, number of
    epochs and seed.
    Evaluation and output: ``num_samples`` (K of the final held-out IWAE bound), ``digit`` (the
    class a conditional VAE draws), ``dataset`` (with ``data_dir``) or ``data`` (a file or
    folder of one's own: see :func:`pvae.data.load_array`; ``held_out_fraction`` of it is held
    out, images resized to ``image_size``), ``device``, ``out``, ``tensorboard`` (a folder
    for TensorBoard's event files, or none).
    """

    # The example's model and training (benchmarks/default_example.py chose them;
    # docs/getting_started.md, "What the example does"): a VampPrior and DReG-5 with z = 50
    # beat Trace_ELBO and Pyro's own example in the same time. build_vae's and pvae.fit's own
    # defaults stay N(0, I) and Trace_ELBO.
    z_dim: int = 50
    prior: str | None = None  # None: vamp (100 pseudo-inputs), or standard_normal for the
    # variants a VampPrior does not fit
    objective: str | None = None  # None: dreg, or elbo for the variants that need it
    num_particles: int | None = None  # None: 5 for iwae and dreg, 1 for the others
    num_epochs: int = 150
    seed: int = 0
    conditional: bool = False
    num_samples: int = 1000
    digit: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    data: str | None = None
    held_out_fraction: float = 0.1
    image_size: list[int] | None = None
    device: str = "auto"
    out: str = "runs/mnist_svi"
    tensorboard: str | None = None

    def __post_init__(self) -> None:
        if self.prior is None:
            self.prior = "vamp" if self._vamp_fits() else "standard_normal"
            if self.prior == "vamp" and not self.prior_options:
                self.prior_options = dict(_DEFAULT_VAMP_OPTIONS)
        # A beta-VAE and an adversarial autoencoder need the ELBO; --objective elbo alone is
        # Trace_ELBO with one particle, as it was before DReG-5 became the default.
        if self.objective is None:
            weighted = self.beta != 1 or self.warmup_epochs > 0 or self.adversarial
            self.objective = "elbo" if weighted else "dreg"
        if self.num_particles is None:
            self.num_particles = _DEFAULT_PARTICLES.get(self.objective, 1)

    def _vamp_fits(self) -> bool:
        """Whether the default VampPrior suits this model: it pushes pseudo-inputs in [0, 1]
        (binary digits' range) through an MLP encoder, which a conditional VAE's, a
        hierarchy's and an adversarial autoencoder's (deterministic) encoders do not take,
        and a beta-VAE's KL weight means a factorized N(0, I)."""
        variant = self.conditional or self.adversarial or self.hierarchy is not None
        weighted = self.beta != 1 or self.warmup_epochs > 0
        plain = self.network == "mlp" and self.likelihood == "bernoulli"
        return plain and not (variant or weighted)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | None = None) -> Config:
        """Check every key and value of ``values``; missing keys take their defaults.

        ``source`` (e.g. ``"config file run.yaml"``) begins every error message.

        Example::

            >>> Config.from_dict({"z_dim": "twenty"})
            Traceback (most recent call last):
            ...
            ValueError: config key 'z_dim' must be an integer, got 'twenty' (str)
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{source or 'the config'} must be a mapping of settings (key: value), got "
                f"{type(values).__name__}"
            )
        try:
            return cls._checked(values, source or "the config")
        except ValueError as error:
            if source is None or source in str(error):
                raise
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def _checked(cls, values: Mapping[str, Any], source: str) -> Config:
        hints = typing.get_type_hints(cls)
        fields = [field.name for field in dataclasses.fields(cls)]
        checked = {}
        for key, value in renamed_settings(values, warn=True).items():
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown config key {_shown(key)} in {source}{hint}; valid keys: "
                    f"{', '.join(fields)}"
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
        return ModelConfig(
            x_dim=x_dim,
            image_shape=list(image_shape) if image_shape is not None else None,
            num_classes=num_classes if self.conditional else 0,
            **{key: getattr(self, key) for key in ARCHITECTURE_KEYS},
        ).to_dict()

    def train_args(self) -> dict[str, Any]:
        """The :func:`pvae.fit` keyword arguments these settings give."""
        return {key: getattr(self, key) for key in TRAIN_KEYS}

    def _check_values(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"config key 'dataset': unknown dataset {self.dataset!r}: choose one of "
                f"{', '.join(DATASETS)}"
            )
        self.check_architecture(self.conditional)
        self.check()
        if self.hierarchy is not None and self.objective == "meanfield":  # Pyro only warns
            raise ValueError(
                "objective 'meanfield' is not the ELBO of a hierarchical VAE: it takes "
                "KL(q(z1|x) || p(z1|z2)) in closed form at a z2 drawn given z1; use 'elbo'"
            )
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(
                f"held_out_fraction must lie strictly between 0 and 1, got {self.held_out_fraction}"
            )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be [height, width], got {self.image_size}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {self.num_samples}")
        if self.adversarial and self.objective != "elbo":
            raise ValueError(
                f"the adversarial autoencoder trains with objective 'elbo', not "
                f"{self.objective!r}: it has a deterministic encoder and no bound to weight"
            )
        if (self.beta != 1 or self.warmup_epochs > 0) and self.objective not in _SCALED_OBJECTIVES:
            raise ValueError(
                f"beta = {self.beta:g} / warmup_epochs = {self.warmup_epochs} weight the KL "
                f"term, which objective {self.objective!r} ignores: use objective "
                f"{' or '.join(_SCALED_OBJECTIVES)}, or beta 1 and warmup_epochs 0"
            )
        weighted = self.beta != 1 or self.warmup_epochs > 0 or self.adversarial
        if self.held_out_num_samples > 1 and weighted:
            raise ValueError(
                f"held_out_num_samples = {self.held_out_num_samples} judges epochs by the held-out "
                "IWAE bound on log p(x), which a weighted KL term (beta, warmup_epochs) or an "
                "adversarial autoencoder does not have: keep held_out_num_samples 1"
            )
        if self.digit is not None and not self.conditional:
            raise ValueError(
                f"digit = {self.digit} draws a chosen class, which needs a conditional VAE: "
                "set conditional: true (--conditional)"
            )
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise ValueError(f"digit must be a class label in 0..9, got {self.digit}")


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


# Values in messages: short and on one line, whatever a file holds (long lists, YAML aliases).
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_shown = _repr.repr


def _check_type(key: str, value, annotation):
    if not _matches(value, annotation):
        raise ValueError(
            f"config key {key!r} must be {_type_name(annotation)}, got {_shown(value)} "
            f"({type(value).__name__})"
        )
    if annotation is float and isinstance(value, int):
        return float(value)
    return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; this loader reads it as the number it means, and
    refuses a key given twice (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {_shown(key)} is given twice (first on line {seen[key]}): "
                        "keep one",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


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
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ValueError(f"{source} is not valid YAML{where}: {problem}") from None
    except Exception as error:  # a constructor's own: a date like 2024-02-30, deep nesting
        raise ValueError(f"{source} is not valid YAML: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (unchecked; an empty file is ``{}``).

    The text is UTF-8 (or UTF-16 with a byte-order mark), as YAML requires: a file in
    another encoding is refused rather than guessed at, since its strings are paths.

    Example::

        >>> read_config_file("examples/configs/beta_vae.yaml")["beta"]  # doctest: +SKIP
        4.0
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error.strerror or error}") from None
    values = parse_yaml(_config_text(path, raw), f"config file {path}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings (key: value), got "
            f"{type(values).__name__}"
        )
    return values


def _config_text(path: Path, raw: bytes) -> str:
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if b"\x00" in raw and not utf16:
        raise ValueError(
            f"config file {path} is a binary file, not YAML text: give a text file of "
            "settings, one 'key: value' per line"
        )
    try:
        return raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        where = f"byte 0x{raw[error.start]:02x} on line {line}"
        raise ValueError(
            f"config file {path} is not {'UTF-16' if utf16 else 'UTF-8'} text ({where}): save "
            "it as UTF-8"
        ) from None


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
