"""``ModelConfig``: which Table-2 variant and every size of the network; defaults are the paper's (Sec. 4.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .caffenet import CNN_NAMES, NORMS, conv_specs, feature_map_sizes, pool5_grid
from .variants import VARIANTS


@dataclass
class ModelConfig:
    """The variant (one of ``VARIANTS``, Table 2) and the sizes of the CNN, the temporal attention
    model and the spatial recurrent model.

    Defaults follow the paper: T = 6 frames per clip, 227×227 frames, CaffeNet with
    fc6 = fc7 = 1024, λ = 1 in Eq. 2 — except for two settings made for training from scratch
    (below): ``norm="batch"`` and ``fc_dropout=0``; CaffeNet's own are ``norm="lrn"`` and
    ``fc_dropout=0.5``, which ImageNet CaffeNet weights (``CaffeNet.load_pretrained``) need.
    The paper does not give the RNN sizes; ``rnn_hidden`` (TAM/LSTM state), ``attention_dim``
    (the sub-net of Fig. 4), ``srm_in`` (channels after the first 1×1 conv of the SRM),
    ``srm_hidden`` (state of each of the six spatial LSTMs) and ``srm_out`` (channels of the
    contextual feature) are our choices, as is ``dropout`` (before the metric heads' FC).
    ``rnn_hidden`` equals ``fc_dim`` in every shipped config, so CNN (fc7 average) and CNN+RNN /
    CNN+TAM (LSTM output) rank by features of one size in Table 2.

    ``norm="batch"`` puts BatchNorm after every convolution instead of LRN. The paper starts
    from ImageNet weights, which cannot be downloaded here; from scratch, the LRN network with
    0.5 dropout on fc6/fc7 barely trains in a few hundred steps (docs/experiments.md: CNN+RNN
    rank-1 4.7 vs 64.1 with BatchNorm and no fc dropout, same 200 steps).

    ``pretrained``: a frame CNN the trainer loads when a run starts (``load_pretrained_cnn``): the
    ``cnn.pt`` of ``reidkit pretrain`` (the paper's protocol without ImageNet), any run's
    checkpoint, or ImageNet CaffeNet converted by ``reidkit convert-caffemodel`` (``norm="lrn"``).
    The convolutions must fit; fc6/fc7 of another width start fresh. The file is read at train
    time, never by ``load_model`` (a checkpoint already holds the weights).

    ``ModelConfig.cpu()`` is the documented CPU-sized setting; every result must say which was used.
    """

    variant: str = field(default="all", metadata={"choices": VARIANTS})  # which Table-2 model
    seq_len: int = 6
    height: int = 227
    width: int = 227
    cnn: str = "caffenet"
    width_mult: float = 1.0
    fc_dim: int = 1024
    rnn_hidden: int = 1024
    attention_dim: int = 256
    attention_temperature: float = 1.0  # ω_t = softmax(e_t / τ); 1 = Eq. 3 as printed
    srm_in: int = 64
    srm_hidden: int = 32
    srm_out: int = 32
    lam: float = 1.0
    dropout: float = 0.5
    fc_dropout: float = 0.0
    norm: str = "batch"
    pretrained: str | None = None  # a frame CNN to start from: ``reidkit pretrain``'s cnn.pt, a run, or ImageNet CaffeNet

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def cpu(cls, **overrides) -> ModelConfig:
        """The CPU-sized setting: the model section of ``configs/cpu.yaml`` (128×64 frames,
        ``caffenet_light`` at a quarter of the channels; the file says why), with ``overrides``."""
        from reidkit.config import CONFIG_DIR, Config  # noqa: PLC0415 (reidkit.config imports this package)

        model = Config.from_yaml(CONFIG_DIR / "cpu.yaml").model
        return cls.from_dict({**model.to_dict(), **overrides}) if overrides else model

    @property
    def pool5_grid(self) -> tuple[int, int]:
        """(h, w) of the pool5 map this config's frames produce."""
        return pool5_grid(self.cnn, self.height, self.width)

    @property
    def pool5_channels(self) -> int:
        return conv_specs(self.cnn, self.width_mult)[-1][1]

    def validate(self) -> None:
        """Raise ``ValueError`` with a message that says what to change."""
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.cnn not in CNN_NAMES:
            raise ValueError(f"unknown cnn {self.cnn!r}; expected one of {CNN_NAMES}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 (the paper uses T = 6), got {self.seq_len}")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
        for name in ("fc_dim", "rnn_hidden", "attention_dim", "srm_in", "srm_hidden", "srm_out"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "fc_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.pretrained is not None:
            if not isinstance(self.pretrained, str) or not self.pretrained.strip():
                raise ValueError(f"pretrained must be a file path or null, got {self.pretrained!r}")
        if not self.attention_temperature > 0:
            raise ValueError(f"attention_temperature must be > 0, got {self.attention_temperature}")
        if self.lam < 0:
            raise ValueError(f"lam (λ of Eq. 2) must be >= 0, got {self.lam}")
        h, w = self.pool5_grid
        if h < 1 or w < 1:
            trace = ", ".join(f"{n} {a}×{b}" for n, a, b in feature_map_sizes(self.cnn, self.height, self.width))
            raise ValueError(
                f"input {self.height}×{self.width} is too small for cnn={self.cnn!r}: pool5 would be "
                f"{h}×{w} ({trace}); use larger frames or cnn='caffenet_light'"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
