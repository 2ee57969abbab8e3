"""CaffeNet, the per-frame CNN f(x) of the paper (Sec. 3.1, Fig. 2).

CaffeNet is AlexNet with pooling *before* local response normalisation:

    conv1 (96, 11×11, stride 4) → ReLU → maxpool 3/2 → LRN(5, 1e-4, 0.75)
    conv2 (256, 5×5, pad 2, groups 2) → ReLU → maxpool 3/2 → LRN
    conv3 (384, 3×3, pad 1) → ReLU → conv4 (384, groups 2) → ReLU → conv5 (256, groups 2) → ReLU
    maxpool 3/2 (= pool5) → fc6 (1024) → ReLU → dropout → fc7 (1024) → ReLU → dropout

fc6 = fc7 = 1024 as in the paper (Sec. 4.2), not AlexNet's 4096.

Two variants (``cnn``, as ``ModelConfig.cnn``):

- ``"caffenet"``: exactly the layers above (the paper's setting, 227×227 → pool5 6×6).
- ``"caffenet_light"``: the same five-conv network with conv1 at stride 2 (pad 5) instead of
  stride 4, so a small frame keeps a real pool5 grid for the spatial RNNs
  (128×64 → pool5 8×4; the standard CaffeNet gives 3×1). Combine with ``width_mult`` < 1 to
  shrink every layer's channel count for CPU training (``ModelConfig.cpu()``).

And two normalisations (``norm``, as ``ModelConfig.norm``): ``"lrn"``, CaffeNet's own (the layers above,
what ImageNet CaffeNet weights expect), and ``"batch"``: BatchNorm between each convolution
(and fc6, fc7) and its ReLU, no LRN. Without it on fc6/fc7, fc7 grew to ~5× its usual norm in
50 steps on the heavier-occlusion synthetic data and saturated the TAM's LSTM: every clip got
the same feature and training stopped (docs/experiments.md). Trained from scratch (nothing here
downloads weights), the LRN network with 0.5 dropout on fc6/fc7 learns little in a few hundred
steps; BatchNorm and ``fc_dropout=0`` train it (docs/experiments.md measures both). ImageNet
weights, for a user who has BVLC's file, come through ``reidkit convert-caffemodel``
(``reidkit.caffemodel``) and ``model.pretrained``.

Max-pooling uses ``ceil_mode=True`` in both variants because Caffe rounds pooling output sizes
up; at 227×227 this gives the same 55 → 27 → 13 → 6 sizes as floor rounding.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reidkit.files import unreadable_torch_file

# (name, out_channels, kernel, stride, padding, groups) for the five convolutions.
_CONVS = (
    ("conv1", 96, 11, 4, 0, 1),
    ("conv2", 256, 5, 1, 2, 2),
    ("conv3", 384, 3, 1, 1, 1),
    ("conv4", 384, 3, 1, 1, 2),
    ("conv5", 256, 3, 1, 1, 2),
)
_POOL_AFTER = ("conv1", "conv2", "conv5")  # 3×3 max-pool, stride 2
CNN_NAMES = ("caffenet", "caffenet_light")
NORMS = ("lrn", "batch")


class PretrainedWeightsError(ValueError):
    """A weights file does not fit the network; the message names every offending key."""


def conv_specs(cnn: str, width_mult: float = 1.0) -> list[tuple[str, int, int, int, int, int]]:
    """The five conv layers of ``cnn`` as (name, out_channels, kernel, stride, padding, groups)."""
    if cnn not in CNN_NAMES:
        raise ValueError(f"unknown cnn {cnn!r}; expected one of {CNN_NAMES}")
    specs = []
    for name, out, k, s, p, g in _CONVS:
        if cnn == "caffenet_light" and name == "conv1":
            s, p = 2, 5  # the lighter stride: twice the resolution everywhere below conv1
        # channels stay a multiple of 2 so the grouped convs split evenly
        out = max(2, 2 * int(round(out * width_mult / 2)))
        specs.append((name, out, k, s, p, g))
    return specs


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _pool_out(size: int, k: int = 3, s: int = 2) -> int:
    # torch's ceil_mode rule: round up, but the last window must start inside the input
    if size < k:
        return 0
    out = math.ceil((size - k) / s) + 1
    if (out - 1) * s >= size:
        out -= 1
    return out


def feature_map_sizes(cnn: str, height: int, width: int) -> list[tuple[str, int, int]]:
    """Spatial size after every conv and pool layer, e.g. [("conv1", 55, 55), ("pool1", 27, 27), ...]."""
    sizes, h, w = [], height, width
    for i, (name, _, k, s, p, _) in enumerate(conv_specs(cnn)):
        h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        sizes.append((name, h, w))
        if name in _POOL_AFTER:
            h, w = _pool_out(h), _pool_out(w)
            sizes.append(("pool5" if name == "conv5" else f"pool{i + 1}", h, w))
    return sizes


def pool5_grid(cnn: str, height: int, width: int) -> tuple[int, int]:
    """(h, w) of the pool5 map for a height×width input (≤ 0 when the input is too small)."""
    h, w = height, width
    for _, h, w in feature_map_sizes(cnn, height, width):
        if h <= 0 or w <= 0:  # the input vanished before pool5
            return max(h, 0), max(w, 0)
    return h, w


class CaffeNet(nn.Module):
    """The frame CNN f(x) of Sec. 3.1 (Fig. 2): five convs, pool5, fc6, fc7.

    ``forward(x)`` takes frames ``(N·T, 3, H, W)`` and returns ``(pool5, fc7)``: pool5 feeds the
    spatial recurrent model (Sec. 3.3), fc7 the temporal model (Sec. 3.2). With
    ``with_fc=False`` (metric-only variants) fc6/fc7 are not built and fc7 is ``None``.
    fc6's input size is computed from ``height`` × ``width``, the frame size the network is built
    for (no lazy layers: the parameter count is known at construction). The arguments are the
    ``ModelConfig`` fields of the same names (``cnn``, ``width_mult``, ``fc_dim``, ``norm``,
    ``fc_dropout``); ``JSTRNN`` passes them on.
    """

    def __init__(self, cnn: str = "caffenet", width_mult: float = 1.0, height: int = 227, width: int = 227,
                 fc_dim: int = 1024, norm: str = "batch", fc_dropout: float = 0.0, with_fc: bool = True):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        self.name, self.width_mult, self.frame_size, self.with_fc = cnn, width_mult, (height, width), with_fc
        in_ch = 3
        self.bn = nn.ModuleDict() if norm == "batch" else None
        for name, out, k, s, p, g in conv_specs(cnn, width_mult):
            setattr(self, name, nn.Conv2d(in_ch, out, k, stride=s, padding=p, groups=g))
            if self.bn is not None:
                self.bn[name] = nn.BatchNorm2d(out)
            in_ch = out
        self.out_channels = in_ch
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        # Caffe's LRN divides alpha by the window size, as torch does.
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if self.bn is None else nn.Identity()
        self.grid = pool5_grid(cnn, height, width)
        if with_fc:
            self.fc6 = nn.Linear(in_ch * self.grid[0] * self.grid[1], fc_dim)
            self.fc7 = nn.Linear(fc_dim, fc_dim)
            self.dropout = nn.Dropout(fc_dropout)
            if self.bn is not None:  # fc6/fc7 too: keeps fc7's scale, which the LSTMs take as input
                self.bn["fc6"] = nn.BatchNorm1d(fc_dim)
                self.bn["fc7"] = nn.BatchNorm1d(fc_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (fan-in, ReLU) with zero biases.

        torch's default layer init shrinks activations layer after layer (pool5 ends up
        ~0.03 for unit-variance input), so the pool5 *differences* the metric branch learns
        from start near zero and M barely trains from scratch. He init keeps the scale.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """conv or fc → (BatchNorm) → ReLU."""
        x = getattr(self, name)(x)
        return F.relu(x if self.bn is None else self.bn[name](x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.norm(self.pool(self._layer("conv1", x)))  # CaffeNet: pool, then normalise (LRN)
        x = self.norm(self.pool(self._layer("conv2", x)))
        x = self._layer("conv3", x)
        x = self._layer("conv4", x)
        # conv5 and pool5 in fp32 under autocast: the metric branch compares two clips by the
        # *difference* of their pool5 maps, which bf16's 8-bit mantissa leaves mostly rounding
        # noise (measured: CNN+DIFF rank-1 15-17 with a bf16 pool5, 25 in fp32, docs/experiments.md).
        # On CUDA, cuDNN would run this fp32 convolution in TF32 (a 10-bit mantissa) by default:
        # the trainer and evaluate turn that off (``disable_cudnn_tf32``)
        with torch.autocast(x.device.type, enabled=False):
            pool5 = self.pool(self._layer("conv5", x.float()))
        if not self.with_fc:
            return pool5, None
        # flatten (not view): pool5 may be channels_last in memory
        x = self.dropout(self._layer("fc6", torch.flatten(pool5, 1)))
        fc7 = self.dropout(self._layer("fc7", x))
        return pool5, fc7

    def load_pretrained(self, path: str | Path, skip_mismatched_fc: bool = False) -> PretrainedLoad:
        """Load a local state-dict file (``torch.load(weights_only=True)``); nothing is downloaded.

        Keys are ``conv1.weight`` … ``conv5.bias``, ``fc6.*``, ``fc7.*`` (Caffe's layer names, so
        converted Caffe weights load as they are; grouped convs have the same weight shapes).
        A file holding ``{"state_dict": ...}`` is unwrapped. A network built without fc layers
        ignores the file's fc6/fc7. Any missing or unexpected key, or shape mismatch, raises
        :class:`PretrainedWeightsError` naming each key (with expected and found shapes).

        ``skip_mismatched_fc``: fc6/fc7 that are absent from the file or of other shapes (the
        paper's fc_dim 1024 vs ImageNet CaffeNet's 4096) keep their fresh initialisation instead;
        the convolutions must still fit. Returns what was loaded and what was skipped.
        """
        state = read_weights(path)
        if not self.with_fc:
            state = {k: v for k, v in state.items() if not k.startswith(("fc6.", "fc7.", "bn.fc6.", "bn.fc7."))}
        own = self.state_dict()
        fresh, skipped = set(), []
        if skip_mismatched_fc and self.with_fc:
            for layer in ("fc6", "fc7"):
                prefixes = (f"{layer}.", f"bn.{layer}.")
                keys = [k for k in own if k.startswith(prefixes)]
                if all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in keys):
                    continue
                found = state.get(f"{layer}.weight")
                fresh.update(k.rsplit(".", 1)[0] for k in keys)
                skipped.append(f"{layer} (file {tuple(found.shape)}, model {tuple(own[f'{layer}.weight'].shape)})"
                               if found is not None else f"{layer} (not in the file)")
                state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
                state.update({k: own[k] for k in keys})  # loads as itself: stays fresh
        missing, unexpected, mismatched = state_dict_differences(own, state)
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
            if all(k.startswith("bn.") for k in missing):
                problems.append("the file has no BatchNorm layers: build the network with norm='lrn' "
                                "(CaffeNet's own) to load ImageNet CaffeNet weights")
        if unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise PretrainedWeightsError(
                f"{path} does not fit CaffeNet(cnn={self.name!r}, width_mult={self.width_mult}, "
                f"{self.frame_size[0]}×{self.frame_size[1]}): " + " | ".join(problems)
            )
        self.load_state_dict(state)
        loaded = [n for n in dict.fromkeys(k.rsplit(".", 1)[0] for k in own) if n not in fresh]
        return PretrainedLoad(loaded, skipped)


def disable_cudnn_tf32() -> None:
    """Run cuDNN's fp32 convolutions and RNNs in true fp32 (IEEE), not TF32.

    cuDNN's default on Ampere and later GPUs is TF32 (a 10-bit mantissa, like fp16's) for fp32
    convolutions and RNNs, so the regions the models keep in fp32 under bf16 autocast (conv5 and
    pool5 here, every ``nn.LSTM`` in ``spatial.py`` and ``temporal.py``) would lose what fp32 was
    kept for. Under bf16 autocast the other layers run in bf16 and are unaffected; with
    ``train.amp=off`` every convolution is then true fp32 (slower). cuBLAS matmuls
    (``nn.Linear``, ``nn.LSTMCell``) are fp32 by torch's default and left as they are. A global
    setting (cuDNN has no per-call one that ``torch.compile`` keeps): ``Trainer`` and
    ``reidkit.evaluate`` call it on CUDA. Through ``allow_tf32``, which keeps torch's older and
    per-operator (2.9+) flags consistent; setting only the per-operator ones makes every later
    read of ``allow_tf32`` (torch.compile's convolution templates read it) raise."""
    with warnings.catch_warnings():  # a torch that prefers the per-operator API may say so
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = False


def cudnn_tf32() -> dict:
    """Whether fp32 cuDNN convolutions and RNNs, and fp32 cuBLAS matmuls, may use TF32:
    ``{"conv", "rnn", "matmul"}`` → True, False, or None when torch's flags cannot be read."""
    def read(getter):
        try:
            value = getter()
        except (AttributeError, RuntimeError):  # e.g. older and per-operator flags set inconsistently
            return None
        return value == "tf32" if isinstance(value, str) else bool(value)

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(cudnn, "rnn"):  # torch 2.9+: per operator
        return {"conv": read(lambda: cudnn.conv.fp32_precision), "rnn": read(lambda: cudnn.rnn.fp32_precision),
                "matmul": read(lambda: matmul.allow_tf32)}
    tf32 = read(lambda: cudnn.allow_tf32)
    return {"conv": tf32, "rnn": tf32, "matmul": read(lambda: matmul.allow_tf32)}


def state_dict_differences(own: dict, other: dict) -> tuple[list[str], list[str], list[str]]:
    """What keeps ``other`` from loading into a module whose state dict is ``own``: the keys
    missing from it, its unexpected keys, and ``"key: expected (shape), got (shape)"`` lines."""
    missing = sorted(set(own) - set(other))
    unexpected = sorted(set(other) - set(own))
    mismatched = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(other[k].shape)}"
                  for k in sorted(set(own) & set(other)) if tuple(own[k].shape) != tuple(other[k].shape)]
    return missing, unexpected, mismatched


class PretrainedLoad(NamedTuple):
    """What ``CaffeNet.load_pretrained`` did: layers loaded, and layers skipped (with both shapes)."""

    loaded: list[str]
    skipped: list[str]


def check_weights_file(path: str | Path) -> Path:
    """``path`` if it is a file, else a ``FileNotFoundError`` that says how to make one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (make them with `reidkit pretrain` or "
                                f"`reidkit convert-caffemodel`, or set model.pretrained=null)")
    return path


def _checkpoint_cnn(path: Path, state: dict) -> dict:
    """The frame CNN of a reidkit training checkpoint (its ``cnn.*`` weights and BatchNorm statistics,
    under CaffeNet's own keys), after verifying the checkpoint's checksum: a pretraining run is used
    as it is (``reidkit pretrain``), like converted ImageNet weights."""
    from reidkit.checkpoint import verify_state  # noqa: PLC0415 (checkpoint imports this package)

    verify_state(path, state)
    cnn = frame_cnn_weights(state["model"])
    if not cnn:
        raise PretrainedWeightsError(f"{path} is a reidkit checkpoint without a frame CNN (no cnn.* weights)")
    return cnn


def frame_cnn_weights(model_state: dict) -> dict:
    """The ``cnn.*`` entries of a JSTRNN state dict under CaffeNet's own keys (``conv1.weight``, ...)."""
    return {k[len("cnn."):]: v for k, v in model_state.items() if k.startswith("cnn.")}


def read_weights(path: str | Path) -> dict:
    """The state dict in a weights file, read with ``weights_only=True``: converted ImageNet CaffeNet
    (``reidkit convert-caffemodel``), a frame CNN exported by ``reidkit pretrain`` (``{"state_dict": ...}``
    unwrapped), or the CNN of any reidkit training checkpoint; a missing or unreadable file is an
    error naming it."""
    path = check_weights_file(path)
    if path.suffix == ".caffemodel":
        raise PretrainedWeightsError(f"{path} is Caffe's own file: convert it first with "
                                     f"`reidkit convert-caffemodel {path} OUT.pt`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or holding pickled code
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: "
                                     f"{unreadable_torch_file(path, e)}") from None
    if isinstance(state, dict) and {"model", "config"} <= set(state):
        state = _checkpoint_cnn(path, state)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state
