"""Experiment configuration: one dataclass per section, YAML files and ``key=value`` overrides.

A run is described by four sections::

    data:   where the manifest and the frame cache are, which protocol split
    model:  the variant (one of ``reidkit.models.VARIANTS``) and a ``ModelConfig``
    train:  optimisation, schedule, batch shape, device, checkpoints, logging
    eval:   the evaluation protocol used after training (and every ``eval_every`` epochs)

``Config.from_yaml("configs/cpu.yaml", ["train.lr=0.01", "model.variant=cnn"])`` reads a file
and applies overrides. Every value is parsed and checked against the field's type, and an
error names the file, the key and the value: ``train.lr: expected float, got 'abc'``. Unknown
keys are errors too, so a typo never silently does nothing, and so is a key given twice in one
YAML mapping (plain YAML loaders keep the last one without a word). Only ``true``/``false``
are booleans (YAML 1.2): ``amp: off`` is the string ``"off"``, as ``train.amp=off`` is.

``configs/default.yaml`` lists every key once, with the values of the dataclasses below; the
other files are overlays that name their base (``extends: default.yaml``, relative to the
overlay's folder) and list only what differs. ``ModelConfig.cpu()`` is ``configs/cpu.yaml``'s
model section.

The variant is ``model.variant``, a field of the ``ModelConfig`` (``config.model``) handed to
``build_model``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from reidkit.models import ModelConfig


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the shipped configs (default.yaml: every key)
EXTENDS = "extends"  # a config file's key naming the file it overlays


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and reads only
    true/false as booleans (YAML 1.1 also reads on/off/yes/no: ``amp: off`` would be False)."""

    yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (lines {seen[key]} and {line}): remove one",
                        key_node.start_mark)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[str, Any]]:
    """``[(file, its nested dict)]`` of a config file and, before it, of the files its ``extends``
    names (relative to its folder), base first: applied in this order, the overlay wins."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    try:
        d = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    base = d.pop(EXTENDS, None) if isinstance(d, dict) else None
    if base is None:
        return [(str(path), d)]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {EXTENDS}: expected the file name of the config it overlays, got {base!r}")
    base_path = path.parent / base
    seen = (*chain, path)
    if base_path.resolve() in {p.resolve() for p in seen}:
        raise ConfigError(f"{path}: {EXTENDS}: {base} makes a cycle ({' → '.join(map(str, (*seen, base_path)))})")
    return [*_read_layers(base_path, seen), (str(path), d)]


def _choices(*values):
    return {"choices": values}


@dataclass
class DataConfig:
    """Where the data comes from (the frame cache is built at ``model.height`` × ``model.width``)."""

    dataset: str | None = None       # manifest folder (tracklets.csv, splits.json, meta.json)
    split: int = 0                   # index into splits.json (two-camera datasets have ten)
    # where the uint8 frame cache lives (None: DATASET/.cache); it holds every frame of the manifest,
    # and a build is refused up front when the disk lacks room: MARS needs 184.1 GB at 227×227,
    # 29.3 GB at 128×64 (reidkit.data.cache)
    cache_dir: str | None = None
    # training identities held out of training as a validation query/gallery (data.validation):
    # what train.eval_every scores, so learning curves never look at the test identities
    val_ids: int = 0


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Steps are optimizer steps; one step = one P×K batch.

    The defaults are the GPU setting of ``configs/default.yaml`` (the paper gives no optimiser
    settings; these are ours)."""

    epochs: int = 60
    steps_per_epoch: int | None = None   # None: one pass over the training tracklets (≈ n / (P·K))
    P: int = 16                          # identities per batch
    K: int = 4                           # tracklets per identity
    optimizer: str = field(default="adam", metadata=_choices("sgd", "adam"))
    lr: float = 3e-4
    cnn_lr_scale: float = 1.0            # the CNN's lr = lr × this (the TAM/SRM heads use lr)
    attention_lr_scale: float = 1.0      # the TAM's attention sub-net (U, V, W, w of Eq. 3): lr × this
    momentum: float = 0.9                # SGD momentum (Adam: beta1)
    weight_decay: float = 5e-4
    schedule: str = field(default="cosine", metadata=_choices("step", "cosine", "none"))
    lr_step_epochs: int = 20             # "step": multiply the lr by lr_gamma every this many epochs
    lr_gamma: float = 0.1
    warmup: int = 500                    # linear warm-up over this many optimizer steps
    grad_clip: float | None = 5.0        # max global gradient norm; None = no clipping
    seed: int = 0
    margin: float | None = 0.3           # triplet margin (on L2-normalised features); null = soft margin
    frame_erasing: float = 0.0           # per-frame probability of an occluding patch (data.erase_frames)
    triplet_weight: float = 1.0
    bce_weight: float = 1.0
    camera_balanced_pairs: bool = True   # M's hard negatives match the positives' camera mix (losses.mine_pairs)
    hard_negative_fraction: float = 0.5  # share of M's negatives that are the hardest; the rest random
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    # bf16 autocast: "auto" = on CUDA, and on CPUs with native bf16 (AVX-512 BF16 / AMX), where it
    # runs ~2x faster than fp32; "bf16" forces it (slow emulation on other CPUs); "off" = fp32.
    amp: str = field(default="auto", metadata=_choices("auto", "bf16", "off"))
    channels_last: bool = True           # NHWC layout for the CNN (CUDA; on CPU 1.4x fp32, 2.2x with bf16)
    compile: bool = False                # torch.compile the frame CNN (CUDA only; the rest breaks graphs)
    cudnn_benchmark: bool = True         # let cuDNN time its kernels for the fixed training shapes (CUDA)
    init: str | None = None              # start from another run's checkpoint (weights only: fresh optimiser
                                         # and schedule), e.g. Table 3's MARS model fine-tuned on iLIDS-VID
    # the training split's uint8 frames on the GPU (MARS at 227×227: 78.8 GB; test frames are read
    # from the memory-mapped cache when evaluating): "auto" uploads them when they fit beside 16 GiB
    # of headroom and otherwise warns and gathers each batch on the host (a prefetch thread, pinned
    # buffers); "always" refuses to start when they do not fit; "never" always gathers on the host
    gpu_cache: str = field(default="auto", metadata=_choices("auto", "always", "never"))
    out_dir: str = "runs/default"
    keep_last: int | None = 3            # keep only the newest n epoch_XXX.pt (None: keep all)
    eval_every: int = 10                 # evaluate every n epochs (0: never during training)
    log_every: int = 50                  # steps between host syncs (logs, NaN check, callbacks)
    progress: bool = True                # tqdm progress bar (rank 0 only)


@dataclass
class EvalConfig:
    """How a trained model is scored (see ``reidkit.evaluate.evaluate``)."""

    convention: str = field(default="common", metadata=_choices("common", "official"))
    rerank_top_k: int = 100              # M re-scores the top-K of the feature ranking
    exact: bool = False                  # all-pairs M (small galleries only)
    batch_size: int = 256                # clips per forward pass at test time


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        """Cross-field checks; raises ConfigError naming the key. Returns self."""
        try:
            self.model.validate()
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
        t = self.train
        for key in ("epochs", "P", "K", "log_every"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key}: expected a positive integer, got {getattr(t, key)}")
        if t.P < 2:
            raise ConfigError(f"train.P: batch-hard mining needs at least 2 identities, got {t.P}")
        if t.K < 2:
            raise ConfigError(f"train.K: the triplet and pair losses need positive pairs, so at least 2 "
                              f"tracklets per identity; got {t.K}")
        if t.steps_per_epoch is not None and t.steps_per_epoch < 1:
            raise ConfigError(f"train.steps_per_epoch: expected a positive integer or null, got {t.steps_per_epoch}")
        for key, value in dataclasses.asdict(t).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{key}: expected a finite number, got {value}")
        if not t.lr > 0:
            raise ConfigError(f"train.lr: expected a positive float, got {t.lr}")
        for name in ("cnn_lr_scale", "attention_lr_scale"):
            if not getattr(t, name) > 0:
                raise ConfigError(f"train.{name}: expected a positive float, got {getattr(t, name)}")
        if not 0.0 <= t.hard_negative_fraction <= 1.0:
            raise ConfigError(f"train.hard_negative_fraction: expected a value in [0, 1], got {t.hard_negative_fraction}")
        if t.margin is not None and t.margin < 0:
            raise ConfigError(f"train.margin: expected a non-negative float or null (soft margin), got {t.margin}")
        if not 0.0 <= t.frame_erasing <= 1.0:
            raise ConfigError(f"train.frame_erasing: expected a probability in [0, 1], got {t.frame_erasing}")
        if t.eval_every < 0:
            raise ConfigError(f"train.eval_every: expected >= 0, got {t.eval_every}")
        if t.keep_last is not None and t.keep_last < 1:
            raise ConfigError(f"train.keep_last: expected a positive integer or null, got {t.keep_last}")
        for key in ("rerank_top_k", "batch_size"):
            if getattr(self.eval, key) < 1:
                raise ConfigError(f"eval.{key}: expected a positive integer, got {getattr(self.eval, key)}")
        if self.data.split < 0:
            raise ConfigError(f"data.split: expected a split index >= 0, got {self.data.split}")
        if self.data.val_ids < 0:
            raise ConfigError(f"data.val_ids: expected a number of identities >= 0, got {self.data.val_ids}")
        return self

    # ---------------------------------------------------------------- dict / YAML
    def to_dict(self) -> dict:
        """Plain nested dict (only str/int/float/bool/None/list), safe for YAML, JSON, checkpoints."""
        return {
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }

    @classmethod
    def from_dict(cls, d: dict | None, overrides: list[str] | tuple[str, ...] = (), source: str = "",
                  settings: dict[str, Any] | None = None) -> "Config":
        """Build from a nested dict (missing keys keep their defaults), then apply ``settings``
        ({"section.key": value}, e.g. command-line options; None values are skipped), then the
        ``section.key=value`` overrides: later wins.

        ``source`` (e.g. the YAML path) prefixes errors about the dict's own keys and values.
        """
        return cls._build([(source, d)], overrides, settings)

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                  settings: dict[str, Any] | None = None) -> "Config":
        """Read a YAML file (None: the defaults) on top of the file its ``extends`` names, if any
        (recursively), then ``settings`` and ``overrides`` as in ``from_dict``. Errors name the
        file that holds the bad key."""
        return cls._build(_read_layers(Path(path)) if path is not None else [], overrides, settings)

    @classmethod
    def _build(cls, layers, overrides, settings) -> "Config":
        """The defaults, then each ``(source, nested dict)`` of ``layers`` in order, then
        ``settings`` and ``overrides``; validated."""
        config = cls()
        for source, d in layers:
            try:
                config._update(d)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}" if source else str(e)) from None
        for key, value in (settings or {}).items():
            if value is not None:
                config.set(key, value)
        for item in overrides:
            config.apply_override(item)
        return config.validate()

    def _update(self, d) -> None:
        """Set every ``section: {key: value}`` of ``d`` (None: nothing)."""
        d = copy.deepcopy(d) if d is not None else {}
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of sections, got {type(d).__name__}")
        for section, values in d.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown config section {section!r} (expected one of {', '.join(_SECTIONS)})")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a mapping, got {values!r}")
            for key, value in values.items():
                self.set(f"{section}.{key}", value)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # ---------------------------------------------------------------- single keys
    def apply_override(self, item: str) -> None:
        """``"train.lr=0.01"``: the value is parsed as YAML, then checked against the field type."""
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = _load_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        # keep the user's text for error messages and for str fields ("1e-3" stays a string there)
        self.set(key, value, raw=text)

    def set(self, key: str, value: Any, raw: str | None = None) -> None:
        """Set ``section.name`` to ``value`` after type checking; errors name the key."""
        obj, name = self._locate(key)
        f = {f.name: f for f in dataclasses.fields(obj)}[name]
        hint = typing.get_type_hints(type(obj)).get(name, type(f.default))
        setattr(obj, name, _coerce(key, value, hint, raw, choices=f.metadata.get("choices")))

    def get(self, key: str) -> Any:
        obj, name = self._locate(key)
        return getattr(obj, name)

    def _locate(self, key: str):
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in _SECTIONS:
            raise ConfigError(f"unknown config key {key!r} (expected section.name with section in "
                              f"{', '.join(_SECTIONS)})")
        section, name = parts
        obj = getattr(self, section)
        names = [f.name for f in dataclasses.fields(obj)]
        if name not in names:
            raise ConfigError(f"unknown config key {key!r} (known {section} keys: {', '.join(names)})")
        return obj, name


_SECTIONS = ("data", "model", "train", "eval")


def _coerce(key: str, value: Any, hint: Any, raw: str | None, choices=None) -> Any:
    """Check/convert ``value`` to the field type ``hint`` (bool, int, float or str, optionally
    ``| None``); raise ConfigError naming ``key``. ``raw`` is the override's text, if any."""
    shown = raw if raw is not None else value
    if typing.get_origin(hint) in (Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
    elif value is None:
        raise ConfigError(f"{key}: expected {hint.__name__}, got null")

    def bad(kind):
        return ConfigError(f"{key}: expected {kind}, got {shown!r}")

    if hint is bool:
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in words:
            out = words[value.strip().lower()]
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        else:
            raise bad("bool (true/false)")
    elif hint in (int, float):
        if isinstance(value, bool):
            raise bad(hint.__name__)
        try:  # YAML reads "1e-3" as a string; float() does not
            number = float(value.strip()) if isinstance(value, str) and hint is float else value
            out = int(value.strip()) if isinstance(value, str) and hint is int else number
        except ValueError:
            raise bad(hint.__name__) from None
        if hint is int and isinstance(out, float) and out.is_integer():
            out = int(out)
        if not isinstance(out, (int, float)) or (hint is int and not isinstance(out, int)):
            raise bad(hint.__name__)
        out = hint(out)
    elif hint is str:
        if raw is not None:
            out = raw.strip()
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out = str(value)
        else:
            raise bad(f"one of {', '.join(map(str, choices))}" if choices is not None else "string")
    else:
        raise TypeError(f"{key}: unsupported field type {hint!r}")  # a new field type needs a rule here
    if choices is not None and out not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {shown!r}")
    return out
