"""Config: YAML files, typed key=value overrides, clear errors, round trips."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from reidkit.config import Config, ConfigError
from reidkit.models import ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_configs_parse():
    default = Config.from_yaml(CONFIGS / "default.yaml")
    assert (default.model.height, default.model.width, default.model.cnn) == (227, 227, "caffenet")
    assert default.model.fc_dim == 1024 and default.model.seq_len == 6 and default.model.variant == "all"
    assert asdict(default.model) == asdict(ModelConfig())  # the paper's sizes
    cpu = Config.from_yaml(CONFIGS / "cpu.yaml")
    assert asdict(cpu.model) == asdict(ModelConfig.cpu())  # the documented CPU-sized setting
    assert cpu.model.pool5_grid[0] >= 8 and cpu.model.pool5_grid[1] >= 4  # a real grid for the SRM
    assert cpu.train.device == "cpu"
    smoke = Config.from_yaml(CONFIGS / "smoke.yaml")
    assert smoke.train.epochs == 1
    paper = Config.from_yaml(CONFIGS / "paper_imagenet.yaml")  # validates although the weights file is absent
    m = paper.model
    assert (m.norm, m.fc_dropout, m.pretrained) == ("lrn", 0.5, "weights/caffenet_imagenet.pt")
    differs = {k for k, v in asdict(paper.model).items() if v != getattr(default.model, k)}
    assert differs == {"norm", "fc_dropout", "pretrained"}  # otherwise the paper's setting of default.yaml
    assert Config.from_yaml(CONFIGS / "paper_imagenet.yaml", ["model.pretrained=null", "model.norm=batch"])


def test_overrides_are_typed():
    c = Config.from_yaml(CONFIGS / "cpu.yaml", [
        "train.lr=1e-3", "train.epochs=5", "train.amp=off", "train.steps_per_epoch=null",
        "model.variant=cnn_srm", "data.dataset=some/dir", "train.grad_clip=none", "model.dropout=0",
        "data.cache_dir=123"])
    assert c.train.lr == 1e-3 and isinstance(c.train.lr, float)  # YAML reads "1e-3" as a string
    assert c.train.epochs == 5 and c.train.amp == "off"  # "off" stays text: only true/false are booleans
    with pytest.raises(ConfigError, match="train.amp: expected one of auto, bf16, off, got False"):
        Config.from_dict({"train": {"amp": False}})
    with pytest.raises(ConfigError, match="train.amp: expected one of auto, bf16, off, got 'true'"):
        Config.from_dict({}, ["train.amp=true"])
    assert c.train.steps_per_epoch is None and c.train.grad_clip is None
    assert c.model.variant == "cnn_srm" and c.data.dataset == "some/dir"
    assert c.model.dropout == 0.0 and isinstance(c.model.dropout, float)
    assert c.data.cache_dir == "123"  # a str field keeps the text as typed


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected float, got 'abc'"),
    ("train.epochs=1.5", "train.epochs: expected int, got '1.5'"),
    ("train.amp=maybe", "train.amp: expected one of auto, bf16, off, got 'maybe'"),
    ("train.frame_erasing=1.5", "train.frame_erasing: expected a probability in [0, 1], got 1.5"),
    ("train.margin=-1", "train.margin: expected a non-negative float or null"),
    ("train.optimizer=rmsprop", "train.optimizer: expected one of sgd, adam, got 'rmsprop'"),
    ("model.variant=cnn_lstm", "model.variant: expected one of cnn, cnn_rnn, cnn_tam, cnn_diff, cnn_srm, all"),
    ("train.learning_rate=0.1", "unknown config key 'train.learning_rate'"),
    ("optim.lr=0.1", "unknown config key 'optim.lr'"),
    ("train.lr", "expected section.key=value"),
    ("train.epochs=0", "train.epochs: expected a positive integer, got 0"),
    ("model.height=20", "model: input 20×227 is too small"),
    ("data.height=100", "unknown config key 'data.height' (known data keys: dataset, split, cache_dir, val_ids)"),
    ("train.K=1", "train.K: the triplet and pair losses need positive pairs"),
    ("train.hard_negative_fraction=1.5", "train.hard_negative_fraction: expected a value in [0, 1], got 1.5"),
    ("model.norm=group", "model: unknown norm 'group'"),
])
def test_bad_values_name_key_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        Config.from_dict({}, [override])
    assert message in str(err.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.lr: expected float, got 'fast'"):
        Config.from_yaml(bad)
    bad.write_text("trainer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config section 'trainer'"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        Config.from_yaml(tmp_path / "nope.yaml")


def test_round_trips(tmp_path):
    c = Config.from_yaml(CONFIGS / "cpu.yaml", ["model.variant=cnn_tam", "train.lr=0.05", "data.dataset=x"])
    d = c.to_dict()
    assert d["model"]["variant"] == "cnn_tam"
    assert Config.from_dict(d).to_dict() == d
    c.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml").to_dict() == d
    assert c.get("train.lr") == 0.05 and c.get("model.variant") == "cnn_tam"
    assert Config.from_dict({}).to_dict() == Config().to_dict()  # defaults = the paper = default.yaml
    assert Config.from_yaml(CONFIGS / "default.yaml").to_dict() == Config().to_dict()


def test_settings_sit_between_the_file_and_the_overrides():
    c = Config.from_yaml(CONFIGS / "cpu.yaml", ["train.lr=0.05"],
                         settings={"train.lr": 0.2, "model.variant": "cnn", "data.dataset": None})
    assert c.train.lr == 0.05 and c.model.variant == "cnn" and c.data.dataset is None  # override wins; None skipped
    with pytest.raises(ConfigError, match="train.P: expected int"):
        Config.from_dict({}, settings={"train.P": "many"})


def test_yaml_booleans_are_true_and_false_only(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n  progress: no\n  channels_last: on\n  compile: true\n")
    t = Config.from_yaml(path).train
    assert (t.amp, t.progress, t.channels_last, t.compile) == ("off", False, True, True)


def test_overlays_extend_a_base(tmp_path):
    """A shipped overlay lists only what differs from default.yaml; ``extends`` is relative to the
    overlay's folder, chains, and errors name the file that holds the bad key."""
    import yaml

    default = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    for name in ("cpu", "smoke", "paper_imagenet"):
        overlay = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert overlay.pop("extends") == "default.yaml"
        same = [f"{s}.{k}" for s, keys in overlay.items() for k, v in (keys or {}).items()
                if v == default[s][k] and k != "cache_dir"]  # cache_dir: kept for its comment
        assert not same, f"{name}.yaml repeats default.yaml's {same}"
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  epochs: 7\n")
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../base.yaml\ntrain:\n  epochs: 3\n")
    (tmp_path / "top.yaml").write_text("extends: sub/mid.yaml\nmodel:\n  variant: cnn\n")
    c = Config.from_yaml(tmp_path / "top.yaml", ["train.epochs=2"])
    assert (c.train.lr, c.train.epochs, c.model.variant, c.train.P) == (0.5, 2, "cnn", 16)
    assert Config.from_yaml(tmp_path / "sub" / "mid.yaml").train.epochs == 3
    (tmp_path / "base.yaml").write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"base.yaml: train.lr: expected float, got 'fast'"):
        Config.from_yaml(tmp_path / "top.yaml")
    (tmp_path / "base.yaml").write_text("extends: top.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: extends: top.yaml makes a cycle"):
        Config.from_yaml(tmp_path / "top.yaml")
    (tmp_path / "top.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*missing.yaml \(extended by .*top.yaml\)"):
        Config.from_yaml(tmp_path / "top.yaml")
    (tmp_path / "top.yaml").write_text("extends: [a, b]\n")
    with pytest.raises(ConfigError, match=r"top.yaml: extends: expected the file name"):
        Config.from_yaml(tmp_path / "top.yaml")


def test_eval_section_is_validated_up_front():
    for item in ("eval.batch_size=0", "eval.rerank_top_k=-3"):
        with pytest.raises(ConfigError, match=item.split("=")[0] + ": expected a positive integer"):
            Config.from_dict({}, [item])
