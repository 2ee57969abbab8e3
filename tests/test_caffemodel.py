"""convert-caffemodel: Caffe's wire format in both layouts, the conv1 fold, clear refusals, model.pretrained.

Fake caffemodels are written in tmp_path by a small protobuf writer below (field numbers from
Caffe's caffe.proto); conv shapes are CaffeNet's own, fc6/fc7 are 16 wide to stay small.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.caffemodel import CAFFE_MEAN_BGR, CaffeModelError, convert_caffemodel, read_caffemodel
from reidkit.checkpoint import load_model
from reidkit.cli import main
from reidkit.data import normalize_clips
from reidkit.models import CaffeNet, PretrainedWeightsError, build_model, load_pretrained_cnn
from reidkit.train import Trainer
from test_train import make_tiny_dataset, tiny_config  # noqa: F401  (tests/ is on sys.path)

# ---------------------------------------------------------------------- a protobuf writer
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def number_field(number: int, n: int) -> bytes:  # varint (wire type 0)
    return varint(number << 3) + varint(n)


def unpacked(number: int, values: np.ndarray, wire: int = 5) -> bytes:
    """One (key, value) record per value: a repeated float (wire 5) or double (wire 1) without packing."""
    dtype = "<f4" if wire == 5 else "<f8"
    values = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    key = np.frombuffer(varint(number << 3 | wire), np.uint8)
    records = np.empty((values.size, len(key) + values.itemsize), np.uint8)
    records[:, :len(key)] = key
    records[:, len(key):] = values.view(np.uint8).reshape(values.size, -1)
    return records.tobytes()


def blob(a: np.ndarray, v1: bool, packing: str = "packed") -> bytes:
    """A BlobProto: V1 gives num/channels/height/width (fc weights as (1, 1, out, in)), current a BlobShape."""
    if v1:
        head = b"".join(number_field(i + 1, d) for i, d in enumerate((1,) * (4 - a.ndim) + a.shape))
    else:
        head = field(7, field(1, b"".join(varint(d) for d in a.shape)))
    data = {"packed": lambda: field(5, a.astype("<f4").tobytes()),
            "unpacked": lambda: unpacked(5, a),
            "double": lambda: field(8, a.astype("<f8").tobytes())}[packing]()
    return data + head  # fields in any order


def layer(name: str, kind: str, blobs: list[np.ndarray], v1: bool, packing: str = "packed") -> bytes:
    if v1:  # V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6, blobs_lr 7 (unpacked floats)
        body = (field(2, b"data") + field(3, name.encode()) + field(4, name.encode())
                + number_field(5, V1_TYPES[kind]) + b"".join(field(6, blob(b, v1, packing)) for b in blobs)
                + (unpacked(7, np.array([1.0, 2.0])) if blobs else b""))
        return field(2, body)
    body = (field(1, name.encode()) + field(2, kind.encode()) + field(3, b"data") + field(4, name.encode())
            + b"".join(field(7, blob(b, v1, packing)) for b in blobs) + field(6, number_field(1, 1)))  # + a ParamSpec
    return field(100, body)


def caffenet_arrays(fc: int = 16, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """CaffeNet's weights at their real shapes (fc6/fc7 ``fc`` wide), plus a small fc8."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (fc, 9216), "fc7": (fc, fc), "fc8": (10, fc)}
    return {name: [(rng.standard_normal(s) * 0.01).astype(np.float32), rng.standard_normal(s[0]).astype(np.float32)]
            for name, s in shapes.items()}


ORDER = [("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("norm1", "LRN"),
         ("conv2", "Convolution"), ("relu2", "ReLU"), ("pool2", "Pooling"), ("norm2", "LRN"),
         ("conv3", "Convolution"), ("conv4", "Convolution"), ("conv5", "Convolution"), ("pool5", "Pooling"),
         ("fc6", "InnerProduct"), ("fc7", "InnerProduct"), ("fc8", "InnerProduct")]


def write_caffemodel(path: Path, arrays: dict, v1: bool = False, order=ORDER, packing: dict | None = None) -> Path:
    """A NetParameter (name 1, then V1 ``layers`` 2 or current ``layer`` 100) in CaffeNet's layer order."""
    packing = packing or {}
    net = field(1, b"CaffeNet") + b"".join(
        layer(name, kind, arrays.get(name, []) if kind in ("Convolution", "InnerProduct") else [], v1,
              packing.get(name, "packed"))
        for name, kind in order)
    path.write_bytes(net)
    return path


@pytest.fixture(scope="module")
def arrays():
    return caffenet_arrays()


@pytest.fixture(scope="module")
def converted(arrays, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("caffe")
    out = folder / "caffenet.pt"
    convert_caffemodel(write_caffemodel(folder / "net.caffemodel", arrays), out)
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------- the fold
def caffe_conv1(image: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean_bgr=CAFFE_MEAN_BGR) -> torch.Tensor:
    """conv1 as Caffe ran it, in float64: BGR pixels on the 0-255 scale minus the per-channel mean."""
    bgr = image[..., ::-1].astype(np.float64) - np.asarray(mean_bgr)
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
    return F.conv2d(x, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(), stride=4)


@pytest.mark.parametrize("mean", [CAFFE_MEAN_BGR, (90.5, 130.0, 101.25)])
def test_folded_conv1_on_reidkit_input_computes_caffes_conv1(arrays, tmp_path, mean):
    src = write_caffemodel(tmp_path / "net.caffemodel", arrays)
    convert_caffemodel(src, tmp_path / "out.pt", mean_bgr=mean)
    state = load(tmp_path / "out.pt")["state_dict"]
    image = np.random.default_rng(1).integers(0, 256, (227, 227, 3), dtype=np.uint8)  # RGB, as reidkit decodes
    want = caffe_conv1(image, *arrays["conv1"], mean_bgr=mean)
    x = normalize_clips(torch.from_numpy(image)[None, None])[0]  # reidkit's own input pipeline, float32
    got = F.conv2d(x, state["conv1.weight"], state["conv1.bias"], stride=4)
    assert state["conv1.weight"].dtype == torch.float32 and got.shape == (1, 96, 55, 55)
    err = (got.double() - want).abs().max().item()
    assert err <= 2e-6 * want.abs().max().item()  # float32 rounding of a 363-term sum, nothing more
    # a wrong convention is far off: RGB order (no flip), or no mean subtracted
    unflipped = F.conv2d(x, state["conv1.weight"].flip(1), state["conv1.bias"], stride=4)
    assert (unflipped.double() - want).abs().max().item() > 100 * err
    # every other layer is copied as it is
    for name in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert torch.equal(state[f"{name}.weight"], torch.from_numpy(arrays[name][0]))
        assert torch.equal(state[f"{name}.bias"], torch.from_numpy(arrays[name][1]))


def test_whole_converted_network_matches_caffes(arrays, converted):
    """Unfolded weights on Caffe's input vs converted weights on reidkit's: the same fc7 (LRN CaffeNet)."""
    caffe_net, ours = (CaffeNet(fc_dim=16, norm="lrn").eval() for _ in range(2))
    ours.load_pretrained(converted)
    with torch.no_grad():
        for name, (w, b) in arrays.items():
            if name != "fc8":
                getattr(caffe_net, name).weight.copy_(torch.from_numpy(w))
                getattr(caffe_net, name).bias.copy_(torch.from_numpy(b))
        image = np.random.default_rng(2).integers(0, 256, (227, 227, 3), dtype=np.uint8)
        bgr = torch.from_numpy(np.ascontiguousarray((image[..., ::-1] - np.asarray(CAFFE_MEAN_BGR)).transpose(2, 0, 1)))
        pool5_caffe, fc7_caffe = caffe_net(bgr.float()[None])
        pool5, fc7 = ours(normalize_clips(torch.from_numpy(image)[None, None])[0])
    torch.testing.assert_close(pool5, pool5_caffe, rtol=1e-4, atol=1e-4 * pool5_caffe.abs().max().item())
    torch.testing.assert_close(fc7, fc7_caffe, rtol=1e-4, atol=1e-4 * fc7_caffe.abs().max().item())


# ---------------------------------------------------------------------- both formats
def test_v1_and_current_formats_give_the_same_file(arrays, tmp_path):
    # V1: fc blobs (1, 1, out, in), unpacked floats for conv1, float64 blobs for fc7, blobs_lr records
    v1 = write_caffemodel(tmp_path / "v1.caffemodel", arrays, v1=True, packing={"conv1": "unpacked", "fc7": "double"})
    new = write_caffemodel(tmp_path / "new.caffemodel", arrays)
    meta_v1 = convert_caffemodel(v1, tmp_path / "v1.pt")
    meta_new = convert_caffemodel(new, tmp_path / "new.pt")
    a, b = load(tmp_path / "v1.pt"), load(tmp_path / "new.pt")
    assert sorted(a["state_dict"]) == [f"{n}.{p}" for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
                                       for p in ("bias", "weight")]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert meta_v1["format"].startswith("V1") and meta_new["format"].startswith("current")
    assert a["meta"] == meta_v1 and meta_v1["dropped"] == ["fc8"] and meta_v1["fc_dim"] == 16
    assert meta_v1["sha256"] == hashlib.sha256(v1.read_bytes()).hexdigest() and meta_v1["source"] == "v1.caffemodel"
    assert meta_v1["mean_bgr"] == [104.0, 117.0, 123.0]
    fmt, layers, _ = read_caffemodel(v1, keep=("fc6",))
    assert [x.name for x in layers] == [n for n, _ in ORDER]
    assert layers[0].blobs is None and layers[12].blobs[0].shape == (1, 1, 16, 9216)


def test_converted_file_loads_into_lrn_caffenet(converted, arrays):
    net = CaffeNet(fc_dim=16, norm="lrn")
    result = net.load_pretrained(converted)
    assert result.loaded == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"] and result.skipped == []
    assert torch.equal(net.conv4.weight, torch.from_numpy(arrays["conv4"][0]))  # grouped: (384, 192, 3, 3)
    with pytest.raises(PretrainedWeightsError, match="norm='lrn'"):
        CaffeNet(fc_dim=16, norm="batch").load_pretrained(converted)


def test_load_pretrained_cnn_starts_fc_of_another_width_fresh(converted, arrays):
    torch.manual_seed(0)
    model = build_model("cnn", fc_dim=32, norm="lrn")
    fresh = model.cnn.fc6.weight.detach().clone()
    message, skipped = load_pretrained_cnn(model, converted)
    assert skipped == ["fc6 (file (16, 9216), model (32, 9216))", "fc7 (file (16, 16), model (32, 32))"]
    assert "loaded conv1, conv2, conv3, conv4, conv5;" in message and "start fresh" in message
    assert torch.equal(model.cnn.fc6.weight, fresh)
    assert torch.equal(model.cnn.conv5.weight, torch.from_numpy(arrays["conv5"][0]))
    message, skipped = load_pretrained_cnn(build_model("cnn", fc_dim=16, norm="lrn"), converted)
    assert skipped == [] and "fc6, fc7" in message
    message, skipped = load_pretrained_cnn(build_model("cnn_diff", fc_dim=16, norm="lrn"), converted)
    assert skipped == [] and "unused" in message
    with pytest.raises(PretrainedWeightsError, match=r"conv1.weight: expected \(48, 3, 11, 11\)"):  # convs must fit
        load_pretrained_cnn(build_model("cnn", width_mult=0.5, fc_dim=16, norm="lrn"), converted)


# ---------------------------------------------------------------------- refusals
def other_network(arrays, change):
    a = {k: list(v) for k, v in arrays.items()}
    order = list(ORDER)
    change(a, order)
    return a, order


REFUSED = {
    "missing conv3": (lambda a, o: o.remove(("conv3", "Convolution")), r"no layer conv3 \(layers in the file: conv1"),
    "wrong conv shape": (lambda a, o: a.update(conv1=[np.zeros((64, 3, 7, 7), np.float32), np.zeros(64, np.float32)]),
                         r"conv1 weight: expected \(96, 3, 11, 11\), got \(64, 3, 7, 7\)"),
    "fc6 inputs": (lambda a, o: a.update(fc6=[np.zeros((16, 4096), np.float32), np.zeros(16, np.float32)]),
                   r"fc6 weight: expected \(16, 9216\), got \(16, 4096\)"),
    "fc7 inputs": (lambda a, o: a.update(fc7=[np.zeros((16, 8), np.float32), np.zeros(16, np.float32)]),
                   r"fc7 weight: expected \(16, 16\), got \(16, 8\)"),
    "no bias": (lambda a, o: a.update(conv2=a["conv2"][:1]), r"conv2 has 1 blob\(s\), expected 2"),
    "wrong type": (lambda a, o: o.__setitem__(8, ("conv3", "Pooling")),
                   "conv3 is a Pooling layer, expected Convolution"),
    "alexnet": (lambda a, o: o.__setitem__(slice(2, 4), [("norm1", "LRN"), ("pool1", "Pooling")]), "this is AlexNet"),
    "duplicate": (lambda a, o: o.append(("conv2", "Convolution")), "two layers named 'conv2'"),
    "nan": (lambda a, o: a.update(fc7=[np.full((16, 16), np.nan, np.float32), a["fc7"][1]]), "fc7 holds NaN"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_other_networks_are_refused_and_nothing_is_written(arrays, tmp_path, case):
    change, message = REFUSED[case]
    a, order = other_network(arrays, change)
    src = write_caffemodel(tmp_path / "other.caffemodel", a, order=order)
    with pytest.raises(CaffeModelError, match=message):
        convert_caffemodel(src, tmp_path / "out.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.caffemodel"]  # no output, no temporary


def test_damaged_files_are_refused(arrays, tmp_path):
    good = write_caffemodel(tmp_path / "good.caffemodel", caffenet_arrays(fc=4, seed=3), v1=True).read_bytes()
    out = tmp_path / "out.pt"
    cases = {
        "random": np.random.default_rng(0).bytes(5000),
        "text": b'name: "CaffeNet"\nlayer {\n  name: "conv1"\n}\n',
        "empty": b"",
        **{f"cut {k}/7": good[: len(good) * k // 7] for k in range(1, 7)},
        "blob count": field(100, field(1, b"conv1") + field(2, b"Convolution")
                            + field(7, field(7, field(1, varint(96) + varint(3))) + field(5, bytes(8)))),
        "both layouts": good + field(100, field(1, b"x")),
        "V0 layers": field(2, field(1, field(1, b"conv1"))),
    }
    damaged = "not a Caffe model|truncated|no layers"
    messages = {"empty": "no layers", "blob count": "needs 288 values",
                "both layouts": "both V1 'layers' and current 'layer'", "V0 layers": "V0 layers"}
    for name, data in cases.items():
        src = tmp_path / "bad.caffemodel"
        src.write_bytes(data)
        with pytest.raises(CaffeModelError, match=messages.get(name, damaged)) as err:
            convert_caffemodel(src, out)
        assert str(src) in str(err.value), name
        assert not out.exists(), name
    for k in range(1, 7):  # a cut mid-blob says so
        (tmp_path / "bad.caffemodel").write_bytes(good[: len(good) * k // 7])
        with pytest.raises(CaffeModelError, match="truncated"):
            convert_caffemodel(tmp_path / "bad.caffemodel", out)


def test_cli_convert_and_its_errors(arrays, tmp_path, capsys):
    src = write_caffemodel(tmp_path / "net.caffemodel", arrays, v1=True)
    out = tmp_path / "weights" / "caffenet.pt"
    assert main(["convert-caffemodel", str(src), str(out), "--mean", "100,110,120.5"]) == 0
    assert "fc_dim 16" in capsys.readouterr().out
    assert load(out)["meta"]["mean_bgr"] == [100.0, 110.0, 120.5]
    for argv, message in [([str(tmp_path / "nope.caffemodel"), str(tmp_path / "x.pt")], "caffemodel not found"),
                          ([str(out), str(tmp_path / "x.pt")], "not a Caffe model|truncated|no layers"),
                          ([str(src), str(src)], "refusing to overwrite")]:
        assert main(["convert-caffemodel", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("reidkit: error: ") and len(err.strip().splitlines()) == 1
        assert any(m in err for m in message.split("|")), err
    assert not (tmp_path / "x.pt").exists() and src.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["convert-caffemodel", str(src), str(out), "--mean", "104,117"])
    assert "expected three numbers B,G,R" in capsys.readouterr().err
    # an earlier conversion is replaced; any other file only with --force
    assert main(["convert-caffemodel", str(src), str(out)]) == 0 and load(out)["meta"]["mean_bgr"] == [104.0, 117.0, 123.0]
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "config": {}}, other)
    assert main(["convert-caffemodel", str(src), str(other)]) == 2
    assert "is not an earlier output of convert-caffemodel" in capsys.readouterr().err
    assert main(["convert-caffemodel", str(src), str(other), "--force"]) == 0 and "meta" in load(other)


# ---------------------------------------------------------------------- model.pretrained in training
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("pretrained") / "tiny")


def test_training_starts_from_the_converted_weights(tiny, converted, arrays, tmp_path):
    weights = tmp_path / "caffenet.pt"
    weights.write_bytes(converted.read_bytes())
    # real CaffeNet convolutions on 64×64 frames (pool5 1×1): fc6 cannot load (256 inputs vs the file's 9216)
    model = ["model.variant=cnn", "model.height=64", "model.width=64", "model.cnn=caffenet", "model.width_mult=1",
             "model.norm=lrn", "model.fc_dim=16", "train.epochs=1"]
    with pytest.warns(UserWarning, match=r"fc6 \(file \(16, 9216\), model \(16, 256\)\) start fresh"):
        trainer = Trainer(tiny_config(tiny, tmp_path / "run", *model, f"model.pretrained={weights}"))
    cnn = trainer.model.cnn
    assert torch.equal(cnn.conv3.weight, torch.from_numpy(arrays["conv3"][0]))
    assert torch.equal(cnn.fc7.weight, torch.from_numpy(arrays["fc7"][0]))  # 16×16 fits: loaded
    trainer.fit()
    assert not torch.equal(cnn.conv3.weight, torch.from_numpy(arrays["conv3"][0]))  # and trained from there
    weights.unlink()  # a checkpoint holds the weights: loading it never reads the pretrained file
    model_, saved = load_model(tmp_path / "run" / "last.pt")
    assert saved.model.pretrained == str(weights) and torch.equal(model_.cnn.conv3.weight, cnn.conv3.weight)
    with pytest.raises(FileNotFoundError, match="pretrained weights not found: .*caffenet.pt"):  # a new run needs it
        Trainer(tiny_config(tiny, tmp_path / "run2", *model, f"model.pretrained={weights}"))
    other = build_model("cnn", config=saved.model)  # a training checkpoint serves as pretrained weights too
    load_pretrained_cnn(other, tmp_path / "run" / "last.pt")
    assert torch.equal(other.cnn.conv3.weight, cnn.conv3.weight)


def test_train_cli_pretrained_option(tiny, tmp_path, capsys):
    missing = tmp_path / "none.pt"
    argv = ["train", "--dataset", str(tiny), "--out", str(tmp_path / "r"), "--pretrained", str(missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pretrained weights not found: {missing}" in err and len(err.strip().splitlines()) == 1
    assert not (tiny / ".cache").exists()  # refused before the frame cache was built
