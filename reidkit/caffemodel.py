"""ImageNet CaffeNet weights from Caffe's own file: ``reidkit convert-caffemodel SRC OUT``.

The paper takes CaffeNet from Caffe's model zoo (Sec. 3.1, footnote 1), trained on ImageNet. BVLC
distributes it as ``bvlc_reference_caffenet.caffemodel``, a binary protobuf ``caffe.NetParameter``.
This module reads that file without the protobuf package (a small wire-format reader), checks it is
CaffeNet, and writes conv1-conv5, fc6 and fc7 under the keys ``CaffeNet.load_pretrained`` reads.
fc8, the 1000-way ImageNet classifier, is dropped.

Two layouts of ``NetParameter`` exist (field numbers from Caffe's ``src/caffe/proto/caffe.proto``)::

    current: layer = 100  (LayerParameter:   name = 1, type = 2 string, blobs = 7)
    V1:      layers = 2   (V1LayerParameter: name = 4, type = 5 enum,   blobs = 6)
    BlobProto: num = 1, channels = 2, height = 3, width = 4 (V1's 4-D shape), data = 5 (float),
               shape = 7 (BlobShape: dim = 1, int64), double_data = 8

V1 stores an fc weight as (1, 1, out, in) and a bias as (1, 1, 1, out); leading 1s are dropped.

Caffe fed CaffeNet BGR pixels on the 0-255 scale minus a mean (B, G, R = 104, 117, 123: the
per-channel average of BVLC's ilsvrc_2012_mean image, rounded); reidkit feeds ImageNet-normalised RGB (``reidkit.data.MEAN``/``STD``). The conversion folds
the difference into conv1 (``fold_input_convention``), so the converted network computes what
Caffe's computed on the same image. The fold is exact because conv1 has no padding (it is not
exact at the borders of ``cnn="caffenet_light"``, whose conv1 pads by 5).

AlexNet's file (``bvlc_alexnet``) has the same weight shapes; it is told apart by its layer order
(LRN before pooling) and refused, since reidkit's CaffeNet pools first.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from reidkit.data import MEAN, STD
from reidkit.files import atomic_write
from reidkit.models.caffenet import conv_specs, pool5_grid

__all__ = ["CAFFE_MEAN_BGR", "CaffeModelError", "CaffeLayer", "read_caffemodel", "caffenet_state_dict",
           "fold_input_convention", "convert_caffemodel"]

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # the per-channel ImageNet mean Caffe subtracts, in B, G, R order
FORMATS = {2: "V1 (NetParameter.layers)", 100: "current (NetParameter.layer)"}
_V1_TYPES = {4: "Convolution", 14: "InnerProduct"}  # V1LayerParameter.LayerType values used here


class CaffeModelError(ValueError):
    """A file is not a readable Caffe model, or not CaffeNet; the message names the file."""


class CaffeLayer(NamedTuple):
    name: str
    type: str
    blobs: list[np.ndarray] | None  # read only for the layers the conversion keeps


# ---------------------------------------------------------------------- protobuf wire format
def _varint(buf: memoryview, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CaffeModelError(f"{where}: ends inside a number at byte {pos} (truncated?)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeModelError(f"{where}: not a Caffe model (malformed number at byte {pos})")


def _fixed_run(raw: np.ndarray, key_at: int, pos: int, end: int, width: int) -> tuple[np.ndarray, int]:
    """Payload bytes of consecutive records (same key + ``width`` bytes) from ``key_at``.

    An unpacked ``repeated float`` is one such record per value; matching them in numpy chunks
    keeps a large unpacked blob from costing a Python loop per value."""
    key = raw[key_at:pos]
    rec, p, count, chunk = len(key) + width, pos + width, 1, 64
    while (avail := (end - p) // rec) > 0:
        n = min(avail, chunk)
        ok = (raw[p:p + n * rec].reshape(n, rec)[:, :len(key)] == key).all(1)
        m = n if ok.all() else int(np.argmin(ok))
        p, count, chunk = p + m * rec, count + m, chunk * 2
        if m < n:
            break
    return raw[key_at:p].reshape(count, rec)[:, len(key):].reshape(-1), p


def _fields(buf: memoryview, raw: np.ndarray, start: int, end: int, where: str) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of the message ``buf[start:end]``.

    The value is an int (varint), a (start, end) byte range (length-delimited), or the payload
    bytes as a uint8 array (fixed 32/64-bit; consecutive repeats of the field merged)."""
    out, pos = [], start
    while pos < end:
        key_at = pos
        key, pos = _varint(buf, pos, end, where)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeModelError(f"{where}: not a Caffe model (field number 0 at byte {key_at})")
        if wire == 0:
            value, pos = _varint(buf, pos, end, where)
        elif wire == 2:
            length, pos = _varint(buf, pos, end, where)
            if pos + length > end:
                raise CaffeModelError(f"{where}: a {length}-byte field at byte {pos} runs past the end of its "
                                      f"message (byte {end}): the file is truncated or not a Caffe model")
            value, pos = (pos, pos + length), pos + length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise CaffeModelError(f"{where}: ends inside a field at byte {pos} (truncated?)")
            value, pos = _fixed_run(raw, key_at, pos, end, width)
        else:  # 3/4 are groups, which caffe.proto never uses; 6/7 do not exist
            raise CaffeModelError(f"{where}: not a Caffe model (wire type {wire} at byte {key_at})")
        out.append((number, wire, value))
    return out


def _expect(wire: int, wanted: tuple[int, ...], where: str, field: str) -> None:
    if wire not in wanted:
        raise CaffeModelError(f"{where}: not a Caffe model ({field} has wire type {wire}, expected {wanted})")


def _values(buf: memoryview, wire: int, value, dtype: str, where: str) -> np.ndarray:
    """A packed (range) or unpacked (payload bytes) repeated float/double field as an array."""
    data = buf[value[0]:value[1]] if wire == 2 else value.data
    size = np.dtype(dtype).itemsize
    if len(data) % size:
        raise CaffeModelError(f"{where}: {len(data)} bytes of packed values are not a whole number of "
                              f"{size}-byte values")
    return np.frombuffer(data, dtype=dtype)


def _blob(buf: memoryview, raw: np.ndarray, span: tuple[int, int], where: str) -> np.ndarray:
    """A BlobProto as an array of its own shape (float32 or float64)."""
    legacy, dims, floats, doubles = {}, None, [], []
    for number, wire, value in _fields(buf, raw, *span, where):
        if number in (1, 2, 3, 4):
            _expect(wire, (0,), where, "num/channels/height/width")
            legacy[number] = value
        elif number == 5:
            _expect(wire, (2, 5), where, "data")
            floats.append(_values(buf, wire, value, "<f4", where))
        elif number == 8:
            _expect(wire, (2, 1), where, "double_data")
            doubles.append(_values(buf, wire, value, "<f8", where))
        elif number == 7:
            _expect(wire, (2,), where, "shape")
            dims = []
            for n, w, v in _fields(buf, raw, *value, f"{where} shape"):
                if n != 1:
                    continue
                _expect(w, (0, 2), where, "shape.dim")
                if w == 0:
                    dims.append(v)
                else:  # packed varints
                    p, e = v
                    while p < e:
                        d, p = _varint(buf, p, e, f"{where} shape")
                        dims.append(d)
    # Caffe's rule (Blob::FromProto): any of the V1 fields means the 4-D legacy shape
    shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims or ())
    if any(d >= 2**31 for d in shape):
        raise CaffeModelError(f"{where}: impossible shape {shape}")
    data = np.concatenate(doubles) if doubles else np.concatenate(floats) if floats else np.empty(0, np.float32)
    if data.size != math.prod(shape):
        raise CaffeModelError(f"{where}: shape {shape} needs {math.prod(shape)} values but the blob holds "
                              f"{data.size} (truncated or damaged file)")
    return data.reshape(shape)


def read_caffemodel(path: str | Path, keep: tuple[str, ...] = ()) -> tuple[str, list[CaffeLayer], str]:
    """Read a binary ``caffe.NetParameter``: (format, layers in file order, sha256 of the file).

    Blobs are read only for layers named in ``keep`` (``blobs`` is None for the others)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caffemodel not found: {path}")
    data = path.read_bytes()
    buf, raw = memoryview(data), np.frombuffer(data, np.uint8)
    layers: dict[int, list[CaffeLayer]] = {2: [], 100: []}
    for number, wire, value in _fields(buf, raw, 0, len(data), str(path)):
        if number not in layers:
            continue  # the net's name, inputs, state: nothing the weights need
        where = f"{path}: layer {len(layers[number]) + 1}"
        _expect(wire, (2,), where, "the layer")
        name_field, type_field, blobs_field = (1, 2, 7) if number == 100 else (4, 5, 6)
        name, kind, spans = "", "", []
        for n, w, v in _fields(buf, raw, *value, where):
            if n == name_field:
                _expect(w, (2,), where, "name")
                name = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
            elif n == type_field and number == 100:
                _expect(w, (2,), where, "type")
                kind = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
            elif n == type_field:  # V1: an enum
                _expect(w, (0,), where, "type")
                kind = _V1_TYPES.get(v, f"V1 type {v}")
            elif n == blobs_field:
                _expect(w, (2,), where, "blobs")
                spans.append(v)
            elif number == 2 and n == 1:
                raise CaffeModelError(f"{path}: V0 layers (Caffe before 2014) are not read; upgrade the file with "
                                      f"Caffe's upgrade_net_proto_binary first")
        blobs = None
        if name in keep:
            blobs = [_blob(buf, raw, s, f"{path}: layer {name!r} blob {i}") for i, s in enumerate(spans)]
        layers[number].append(CaffeLayer(name, kind, blobs))
    if layers[2] and layers[100]:
        raise CaffeModelError(f"{path}: holds both V1 'layers' and current 'layer' entries; Caffe itself "
                              f"refuses such a file")
    number = 100 if layers[100] else 2
    if not layers[number]:
        raise CaffeModelError(f"{path}: no layers: not a Caffe model (an empty, text or other protobuf file?)")
    return FORMATS[number], layers[number], hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- CaffeNet
def _expected() -> tuple[dict[str, tuple[int, ...]], int]:
    """Weight shapes of the five convolutions, and fc6's input size (pool5 at 227×227, flattened)."""
    shapes, in_ch = {}, 3
    for name, out, k, _, _, groups in conv_specs("caffenet"):
        shapes[name] = (out, in_ch // groups, k, k)
        in_ch = out
    h, w = pool5_grid("caffenet", 227, 227)
    return shapes, in_ch * h * w  # 256·6·6 = 9216


def _squeeze(a: np.ndarray, rank: int) -> np.ndarray:
    """Drop leading 1s down to ``rank`` dims (V1's (1, 1, out, in) fc weights, (1, 1, 1, out) biases)."""
    while a.ndim > rank and a.shape[0] == 1:
        a = a[0]
    return a


def caffenet_state_dict(layers: list[CaffeLayer], source: str = "") -> dict[str, torch.Tensor]:
    """``conv1.weight`` … ``fc7.bias`` (float32) from CaffeNet's layers, every shape checked.

    fc6/fc7 may have any width (4096 in BVLC's file) as long as fc7 takes fc6's output. All
    problems are listed in one ``CaffeModelError``."""
    convs, fc6_in = _expected()
    wanted = [*convs, "fc6", "fc7"]
    found = {}
    for layer in layers:
        if layer.name in wanted:
            if layer.name in found:
                raise CaffeModelError(f"{source}: two layers named {layer.name!r}")
            found[layer.name] = layer
    order = [layer.name for layer in layers]
    for i in (1, 2):  # AlexNet normalises before pooling, CaffeNet after
        if {f"norm{i}", f"pool{i}"} <= set(order) and order.index(f"norm{i}") < order.index(f"pool{i}"):
            raise CaffeModelError(f"{source}: norm{i} comes before pool{i}: this is AlexNet, not CaffeNet "
                                  f"(reidkit's CaffeNet pools before LRN)")
    missing = [n for n in wanted if n not in found]
    if missing:
        names = [n for n in order if n]
        raise CaffeModelError(f"{source}: not the BVLC reference CaffeNet: no layer {', '.join(missing)} "
                              f"(layers in the file: {', '.join(names[:30]) or 'none named'}"
                              f"{' …' if len(names) > 30 else ''})")
    problems, state = [], {}
    fc_in = {"fc6": fc6_in, "fc7": None}  # fc7's: whatever fc6 puts out
    for name in wanted:
        layer, fc = found[name], name.startswith("fc")
        kind = "InnerProduct" if fc else "Convolution"
        if layer.type != kind:
            problems.append(f"{name} is a {layer.type or 'untyped'} layer, expected {kind}")
            continue
        if len(layer.blobs) != 2:
            problems.append(f"{name} has {len(layer.blobs)} blob(s), expected 2 (weight and bias)")
            continue
        weight, bias = _squeeze(layer.blobs[0], 2 if fc else 4), _squeeze(layer.blobs[1], 1)
        if fc:
            if name == "fc6" and weight.ndim == 2:
                fc_in["fc7"] = weight.shape[0]
            shape = (weight.shape[0] if weight.ndim == 2 else "out", fc_in[name] or "in")
        else:
            shape = convs[name]
        if weight.shape != shape or weight.size == 0:
            problems.append(f"{name} weight: expected {shape}".replace("'", "")
                            + f", got {tuple(layer.blobs[0].shape)}")
            continue
        if bias.shape != (shape[0],):
            problems.append(f"{name} bias: expected ({shape[0]},), got {tuple(layer.blobs[1].shape)}")
            continue
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            problems.append(f"{name} holds NaN or infinite values")
            continue
        state[f"{name}.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    if problems:
        raise CaffeModelError(f"{source}: not the BVLC reference CaffeNet: " + "; ".join(problems))
    return state


def fold_input_convention(weight: torch.Tensor, bias: torch.Tensor,
                          mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1 for reidkit's input from conv1 for Caffe's (float64 inside, float32 out).

    Caffe's input channel c (BGR) is x_c = 255·rgb[2−c] − mean_bgr[c]; reidkit's is
    z_c = (rgb_c − MEAN_c) / STD_c, so rgb = STD·z + MEAN. Substituting into conv1, with
    W̃[:, c] = W[:, 2−c] (channels reversed):

        W'[:, c] = 255·STD_c · W̃[:, c]
        b'       = b + Σ_c (255·MEAN_c − mean_rgb_c) · Σ_{kh,kw} W̃[:, c]

    Exact wherever the kernel sees no padding (everywhere for CaffeNet's conv1)."""
    w = weight.double().flip(1)  # BGR → RGB input channels
    std, mean = torch.tensor(STD, dtype=torch.float64), torch.tensor(MEAN, dtype=torch.float64)
    mean_rgb = torch.tensor(mean_bgr[::-1], dtype=torch.float64)
    folded_w = w * (255.0 * std).view(1, 3, 1, 1)
    folded_b = bias.double() + (w.sum((2, 3)) * (255.0 * mean - mean_rgb)).sum(1)
    return folded_w.float().contiguous(), folded_b.float()


def _converted_before(path: Path) -> bool:
    """Whether ``path`` is an earlier output of :func:`convert_caffemodel` (its own file to replace)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one a weights-only load refuses: not ours
        return False
    return (isinstance(state, dict) and set(state) == {"state_dict", "meta"} and isinstance(state["meta"], dict)
            and "sha256" in state["meta"] and "mean_bgr" in state["meta"])


def convert_caffemodel(src: str | Path, out: str | Path,
                       mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR, force: bool = False) -> dict:
    """Convert BVLC's CaffeNet ``src`` into ``out`` for ``CaffeNet.load_pretrained``; returns the meta.

    ``out`` holds ``{"state_dict": conv1..fc7, "meta": {...}}`` (source name, its sha256, format,
    the mean folded into conv1, fc width, layers dropped), written atomically; nothing is written
    when the source is refused. An existing ``out`` is replaced only when it is an earlier
    conversion, or with ``force`` (never the source itself)."""
    src, out = Path(src), Path(out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ValueError(f"{out} is the caffemodel being converted: refusing to overwrite it")
    if out.exists() and not force and not _converted_before(out):
        raise ValueError(f"{out} exists and is not an earlier output of convert-caffemodel (a checkpoint? other "
                         f"weights?): refusing to replace it; choose another OUT, or pass --force")
    if len(mean_bgr) != 3 or not all(math.isfinite(float(m)) for m in mean_bgr):
        raise ValueError(f"mean: expected three finite numbers B,G,R, got {mean_bgr!r}")
    keep = tuple(n for n, *_ in conv_specs("caffenet")) + ("fc6", "fc7")
    fmt, layers, sha = read_caffemodel(src, keep)
    state = caffenet_state_dict(layers, str(src))
    state["conv1.weight"], state["conv1.bias"] = fold_input_convention(state["conv1.weight"], state["conv1.bias"],
                                                                       tuple(float(m) for m in mean_bgr))
    meta = {
        "source": src.name, "sha256": sha, "format": fmt, "mean_bgr": [float(m) for m in mean_bgr],
        "input": "ImageNet-normalised RGB (reidkit.data MEAN/STD), folded into conv1 from Caffe's BGR 0-255 minus mean",
        "fc_dim": int(state["fc6.weight"].shape[0]),
        "dropped": [x.name for x in layers if x.name not in keep and x.type in ("Convolution", "InnerProduct")],
    }
    with atomic_write(out) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return meta
