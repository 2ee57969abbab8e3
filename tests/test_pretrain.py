"""reidkit pretrain: a population of other people, the exported frame CNN, model.pretrained for any variant."""

import numpy as np
import pytest
import torch

from data_prep.synthetic.generate import make_plan, preset_params
from reidkit.checkpoint import load_checkpoint
from reidkit.cli import main
from reidkit.models import PretrainedWeightsError, build_model, load_pretrained_cnn
from reidkit.pretrain import POPULATION_SEED, export_cnn, population
from tests.test_train import make_tiny_dataset, tiny_config


def _appearance(identity) -> np.ndarray:
    """Body proportions and the five colours of a synthetic person (19 numbers)."""
    d = identity.to_dict()
    return np.hstack([[d[k] for k in ("height", "width", "head", "leg")],
                      *(np.asarray(d[k], float) / 255 for k in ("skin", "hair", "upper", "lower", "shoes"))])


def test_the_pretraining_population_shares_no_one_with_the_lessons_people():
    """The report pretrains on (pretrain, seed 7) and tests on (small, seed 0): no person of the
    population is as close to a lesson's person as the benchmark's own look-alikes are to theirs."""
    people = make_plan(preset_params("pretrain"), POPULATION_SEED)
    lessons = make_plan(preset_params("small"), 0)
    assert len(people.identities) == 156 and len(lessons.identities) == 120
    a = np.stack([_appearance(i) for i in people.identities.values()])
    b = np.stack([_appearance(i) for i in lessons.identities.values()])
    cross = np.abs(a[:, None] - b[None]).sum(-1)
    # the closest look-alike pair inside the lessons' dataset (perturbed copies of one person)
    pid = {p: n for n, p in enumerate(lessons.identities)}
    alike = [np.abs(b[pid[r["pid"]]] - b[pid[r["base"]]]).sum() for r in lessons.relations if r["kind"] == "similar"]
    assert alike and cross.min() > 0 and cross.min() > np.median(alike)
def test_population_refuses_a_folder_of_another_draw(tmp_path):
    data = tmp_path / "d"
    from data_prep.synthetic import generate
    generate(data, preset="tiny", seed=0, progress=False)
    with pytest.raises(ValueError, match=r"holds the synthetic preset 'tiny' with seed 0, not the pretraining population"):
        population(data)


def test_pretrain_cli_exports_a_cnn_that_any_variant_loads(tmp_path, capsys):
    people = make_tiny_dataset(tmp_path / "people", identities=8)
    out = tmp_path / "pre"
    (tmp_path / "c.yaml").write_text(tiny_config(people, out).to_yaml())
    argv = ["pretrain", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--population", str(people),
            "train.epochs=1"]
    assert main(argv) == 0
    assert f"--pretrained {out / 'cnn.pt'}" in capsys.readouterr().out
    saved = torch.load(out / "cnn.pt", weights_only=True)
    state = load_checkpoint(out / "last.pt")
    assert saved["meta"]["variant"] == "cnn" and saved["meta"]["steps"] == state["step"] == 2
    assert torch.equal(saved["state_dict"]["conv2.weight"], state["model"]["cnn.conv2.weight"])
    # the pretrained CNN goes into every variant (BatchNorm statistics included)
    config = tiny_config(people, tmp_path / "ft").model
    for variant in ("all", "cnn_srm"):
        model = build_model(variant, config=config)
        load_pretrained_cnn(model, out / "cnn.pt")
        assert torch.equal(model.cnn.conv5.weight, saved["state_dict"]["conv5.weight"])
        assert torch.equal(model.cnn.bn.conv1.running_mean, saved["state_dict"]["bn.conv1.running_mean"])
    # fc layers of another width start fresh, and the message names both shapes
    wide = build_model("all", config=config, fc_dim=48)
    message, skipped = load_pretrained_cnn(wide, out / "cnn.pt")
    assert skipped and "fc6 (file (32, " in message and "model (48, " in message
    # convolutions that do not fit are refused, naming the layer and both shapes
    with pytest.raises(PretrainedWeightsError, match=r"conv1.weight: expected \(24, 3, 11, 11\), got \(12, 3, 11, 11\)"):
        load_pretrained_cnn(build_model("cnn", config=config, width_mult=0.25), out / "cnn.pt")
    # a second run reuses the finished pretraining instead of training again
    mtime = (out / "last.pt").stat().st_mtime_ns
    assert main(argv) == 0 and (out / "last.pt").stat().st_mtime_ns == mtime
    # other settings are refused, the run kept; --force replaces it
    other = [*argv, "train.lr=0.02"]
    capsys.readouterr()
    assert main(other) == 2 and "holds a run of other settings" in capsys.readouterr().err
    assert (out / "last.pt").stat().st_mtime_ns == mtime
    assert main([*other, "--force"]) == 0
    assert load_checkpoint(out / "last.pt")["config"]["train"]["lr"] == 0.02


def test_export_refuses_a_damaged_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot read checkpoint"):
        export_cnn(bad, tmp_path / "cnn.pt")
    assert not (tmp_path / "cnn.pt").exists()
