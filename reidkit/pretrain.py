"""Pretraining the frame CNN on other people: the kit's stand-in for ImageNet.

Zhou et al. start every variant of Table 2 from one CaffeNet pretrained on ImageNet and
fine-tune it on the re-id data. Without a download, the kit does the same with what it can
make: the synthetic benchmark's ``pretrain`` preset, drawn with another seed, is a population
of 150 people who share no identity with the people of the dataset the variants are trained and
tested on (each identity is drawn from its own seeded generator; ``tests/test_pretrain.py``
checks that no identity of the one appears in the other). The ``cnn`` variant is trained on it
(the feature branch alone: triplet loss on mean-pooled fc7), and its frame CNN (conv1–conv5,
fc6, fc7 and their normalisation layers) is written to ``OUT/cnn.pt``, which ``model.pretrained``
loads into any variant as it loads converted ImageNet CaffeNet weights::

    reidkit pretrain --out runs/pretrain --config configs/cpu.yaml
    reidkit train --dataset DATA --variant all --pretrained runs/pretrain/cnn.pt --config configs/cpu.yaml

For real data the same two steps apply with the paper's setting, e.g. pretraining on the
``large`` preset (MARS-sized) and fine-tuning on MARS:
``reidkit pretrain --preset large --config configs/default.yaml --out runs/pretrain_large``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["POPULATION_SEED", "population", "pretrain", "export_cnn", "pretrained_only"]

POPULATION_SEED = 7  # the pretraining population's generator seed (the lessons' datasets use 0)


def population(out: str | Path, preset: str = "pretrain", seed: int = POPULATION_SEED,
               progress: bool = True) -> Path:
    """The pretraining population at ``out``: the synthetic ``preset`` drawn with ``seed``,
    generated once, then reused. A folder already holding a dataset is used as it is (any
    manifest: e.g. a converted real dataset), except a synthetic one of another preset or seed,
    which is refused (it is not the population asked for)."""
    import json  # noqa: PLC0415

    out = Path(out)
    meta_path = out / "meta.json"
    if (out / "tracklets.csv").is_file() and meta_path.is_file():
        generator = json.loads(meta_path.read_text()).get("generator")
        if generator and (generator.get("preset"), generator.get("seed")) != (preset, seed):
            raise ValueError(f"{out} holds the synthetic preset {generator.get('preset')!r} with seed "
                             f"{generator.get('seed')}, not the pretraining population ({preset!r}, seed {seed}): "
                             f"choose another folder")
        return out
    from data_prep.synthetic import generate  # noqa: PLC0415 (only needed to make a population)

    return generate(out, preset=preset, seed=seed, progress=progress)


def export_cnn(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the frame CNN of a training checkpoint to ``out`` as ``{"state_dict", "meta"}``
    (CaffeNet's keys, as ``reidkit convert-caffemodel`` writes), atomically."""
    import torch  # noqa: PLC0415 (this module's constants are read by the command line at start)

    from reidkit.checkpoint import load_checkpoint  # noqa: PLC0415
    from reidkit.files import atomic_write  # noqa: PLC0415
    from reidkit.models.caffenet import frame_cnn_weights  # noqa: PLC0415

    state = load_checkpoint(checkpoint)
    cnn = frame_cnn_weights(state["model"])
    model = state["config"]["model"]
    meta = {"source": str(checkpoint), "dataset": state["config"]["data"]["dataset"], "variant": model["variant"],
            "cnn": model["cnn"], "width_mult": model["width_mult"], "norm": model["norm"],
            "frame_size": [model["height"], model["width"]], "fc_dim": model["fc_dim"], "steps": int(state["step"])}
    with atomic_write(out, suffix=".pt") as tmp:
        torch.save({"state_dict": cnn, "meta": meta}, tmp)
    return Path(out)


def pretrain(config, population_dir: str | Path, out_dir: str | Path, progress: bool = True,
             force: bool = False) -> Path:
    """Train the ``cnn`` variant of ``config`` on the population and export its frame CNN; returns
    ``out_dir/cnn.pt``. A finished run of the same settings in ``out_dir`` is reused (its export
    is rewritten from its checkpoint), an unfinished one is resumed, and a run of other settings
    is replaced only with ``force``."""
    from reidkit.ablate import earlier_run  # noqa: PLC0415 (ablate imports the trainer)
    from reidkit.config import Config  # noqa: PLC0415
    from reidkit.data import Manifest  # noqa: PLC0415
    from reidkit.train import RunExistsError, Trainer  # noqa: PLC0415

    out_dir = Path(out_dir)
    run_config = Config.from_dict(config.to_dict(), [
        "model.variant=cnn", "model.pretrained=null", "train.init=null", "data.val_ids=0", "train.eval_every=0"],
        settings={"data.dataset": str(population_dir), "train.out_dir": str(out_dir)})
    people = Manifest.load(population_dir)
    try:  # a run of other settings or on another population is refused here, unless forced
        earlier, _ = earlier_run(out_dir, run_config, fingerprint=people.fingerprint)
    except RunExistsError:
        if not force:
            raise
        earlier = "none"
    if earlier != "finished":
        Trainer(run_config, manifest=people).fit(resume=earlier == "unfinished", force=force)
    return export_cnn(out_dir / "last.pt", out_dir / "cnn.pt")


def pretrained_only(model_config, seed: int = 0):
    """The floor of the fine-tuning protocol: the ``cnn`` variant of ``model_config`` (seeded with
    ``seed``) with ``model_config.pretrained`` loaded and nothing fine-tuned."""
    from reidkit.models import build_model, load_pretrained_cnn  # noqa: PLC0415
    from reidkit.train import seed_everything  # noqa: PLC0415

    seed_everything(seed)
    model = build_model("cnn", config=model_config)
    load_pretrained_cnn(model, model_config.pretrained)
    return model
