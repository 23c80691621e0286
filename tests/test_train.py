"""Fine-tuning: recipes, data, losses, the loop, checkpoints, resume after SIGKILL, 2 processes."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import bcosify
from bcosify import nn as bnn
from bcosify.cli import main
from bcosify.train import (
    BCEWithOffTargets,
    DistillationLoss,
    Recipe,
    RecipeError,
    SoftCrossEntropy,
    TrainingError,
    finetune,
    latest_checkpoint,
    load_recipe,
)
from bcosify.train.data import SeededDataset, build_datasets, train_transform
from bcosify.train.recipe import DataSection

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny-cpu.yaml"
WORKER = Path(__file__).resolve().parent / "train_worker.py"
FAST = ["log.explain_images=0", "log.trackers=[csv]"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 classes (crops of 4 real photos), 8 training and 3 validation images each, 48 px."""
    from bcosify.sources import demo_photos

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("images")
    for name, image in demo_photos()[:4]:
        for split, count in (("train", 8), ("val", 3)):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                w, h = image.size
                s = min(w, h) // 2
                x, y = rng.randint(0, w - s), rng.randint(0, h - s)
                crop = image.crop((x, y, x + s, y + s)).resize((48, 48))
                crop.save(root / split / name / f"{k}.png")
    return root


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _worker(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        cwd=ROOT,
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


# ---------------------------------------------------------------------------- recipes
def test_shipped_recipes_are_valid():
    names = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert {"imagenet-resnet18.yaml", "imagenet-resnet50.yaml", "imagenet-densenet121.yaml"} <= set(
        names
    )
    assert {"imagenet-vit-s.yaml", "custom-imagefolder.yaml", "tiny-cpu.yaml"} <= set(names)
    for name in names:
        recipe = load_recipe(ROOT / "recipes" / name)
        assert recipe.model.source
    r50 = load_recipe(ROOT / "recipes" / "imagenet-resnet50.yaml")
    assert (r50.optim.name, r50.optim.lr, r50.optim.weight_decay) == ("adamw", 1e-4, 0.0)
    assert (r50.train.epochs, r50.train.agc, r50.train.loss) == (90, 0.01, "bce")
    assert (r50.optim.schedule_unit, r50.data.batch_size, r50.data.eval_resize) == (
        "epoch",
        64,
        256,
    )
    align = load_recipe(ROOT / "recipes" / "imagenet-resnet50-align.yaml")
    assert (align.train.loss, align.model.config["activation"]) == ("align", "keep")
    vit = load_recipe(ROOT / "recipes" / "imagenet-vit-s.yaml")
    assert (vit.optim.name, vit.optim.lr, vit.optim.warmup_steps) == ("adam", 1e-3, 10000)
    assert (vit.data.augment.mixup, vit.data.augment.randaugment) == (0.2, "rand-m10-n2")


def test_recipe_errors_name_the_key():
    with pytest.raises(RecipeError, match="did you mean train.epochs"):
        load_recipe(TINY, ["train.epocs=3"])
    with pytest.raises(RecipeError, match="optim.lr must be a number"):
        load_recipe(TINY, ["optim.lr=fast"])
    with pytest.raises(RecipeError, match="train.loss must be one of"):
        load_recipe(TINY, ["train.loss=hinge"])
    with pytest.raises(RecipeError, match="exactly one of model.source"):
        Recipe.from_dict({"model": {"source": "resnet18", "model_dir": "x"}})
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(TINY, ["train.epochs"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe.yaml")


def test_recipe_overrides_and_yaml_round_trip():
    r = load_recipe(TINY, ["train.epochs=5", "data.augment.scale=[0.3, 1.0]", "train.agc=null"])
    assert r.train.epochs == 5 and r.data.augment.scale == [0.3, 1.0] and r.train.agc is None
    import yaml

    assert Recipe.from_dict(yaml.safe_load(r.to_yaml())) == r


# ---------------------------------------------------------------------------- losses, data
def test_bce_uses_off_targets_one_over_c():
    logits = torch.randn(3, 5)
    labels = torch.tensor([0, 2, 4])
    target = torch.full((3, 5), 0.2)
    target[torch.arange(3), labels] = 1.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(BCEWithOffTargets(5)(logits, labels), expected)
    # Soft targets (mixup) get the same floor.
    soft = torch.nn.functional.one_hot(labels, 5).float() * 0.6
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, soft.clamp_min(0.2))
    torch.testing.assert_close(BCEWithOffTargets(5)(logits, soft), expected)


def test_cross_entropy_and_distillation():
    logits = torch.randn(4, 6)
    labels = torch.tensor([1, 0, 5, 2])
    onehot = torch.nn.functional.one_hot(labels, 6).float()
    torch.testing.assert_close(
        SoftCrossEntropy()(logits, onehot), SoftCrossEntropy()(logits, labels)
    )
    distill = DistillationLoss(temperature=2.0)
    assert float(distill(logits, logits + 3.0)) == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    assert float(distill(logits, torch.randn(4, 6))) > 0


def test_seeded_augmentation_depends_only_on_seed_epoch_index():
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    ds = SeededDataset([(image, 0)] * 3, train_transform(DataSection(image_size=16)), seed=1)
    first = ds[1][0]
    torch.manual_seed(123)  # the global RNG plays no role
    torch.testing.assert_close(ds[1][0], first, rtol=0, atol=0)
    assert not torch.equal(ds[2][0], first)  # another index, another crop
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first)  # another epoch, another crop


def test_seeded_augmentation_leaves_the_callers_random_streams_alone():
    import random

    import numpy as np

    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    tf = train_transform(DataSection(image_size=16))
    ds = SeededDataset([(image, 0)] * 3, tf, seed=1)
    streams = lambda: (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])  # noqa: E731
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = streams()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    sample = ds[2][0]
    got = streams()
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    # the crop is the one torch.manual_seed(the sample's seed) gives: resumable runs and saved
    # augmentations stay what they were
    torch.manual_seed((1 * 1_000_003 + 0) * 2_147_483_647 + 2)
    torch.testing.assert_close(sample, tf(image), rtol=0, atol=0)


def test_data_errors(tmp_path, folder):
    with pytest.raises(RecipeError, match="not a directory"):
        build_datasets(DataSection(train=str(tmp_path / "missing")))
    with pytest.raises(RecipeError, match="no train/ folder"):
        build_datasets(DataSection(root=str(tmp_path)))
    with pytest.raises(RecipeError, match="data.root"):
        build_datasets(DataSection())
    train, val = build_datasets(DataSection(root=str(folder), image_size=32))
    assert len(train) == 32 and len(val) == 12
    assert train[0][0].shape == (3, 32, 32) and 0 <= float(train[0][0].min())


def test_hf_imagefolder_backend(folder):
    train, val = build_datasets(
        DataSection(root=str(folder), image_size=32, backend="hf-imagefolder")
    )
    assert len(train) == 32 and len(val) == 12
    image, label = train[5]
    assert image.shape == (3, 32, 32) and 0 <= label < 4


# ---------------------------------------------------------------------------- the loop
class _Recorder:
    def __init__(self):
        self.b = []

    def on_step_end(self, state, model):
        unit = next(m for m in model.modules() if isinstance(m, bnn.BcosConv2d))
        self.b.append((state.global_step, unit.b))


def test_finetune_end_to_end(tmp_path, folder):
    recorder = _Recorder()
    out = tmp_path / "run"
    result = finetune(
        TINY,
        [f"data.root={folder}", f"output={out}", "train.b_ramp_steps=4", "log.explain_images=2"],
        callbacks=[recorder],
    )
    assert result.global_step == 8
    for name in ("recipe.yaml", "metrics.json", "curves.png", "logs/metrics.csv"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "explanations").iterdir()) == ["epoch_001", "epoch_002"]
    assert len(list((out / "explanations" / "epoch_002").glob("*.png"))) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"val/loss", "val/top1", "val/top4", "lr"} <= set(metrics[-1])
    assert load_recipe(out / "recipe.yaml").data.root == str(folder)
    # B ramps linearly from 1 to 2 over 4 steps, then stays at 2.
    assert recorder.b == [
        (1, 1.25),
        (2, 1.5),
        (3, 1.75),
        (4, 2.0),
        (5, 2.0),
        (6, 2.0),
        (7, 2.0),
        (8, 2.0),
    ]
    # Checkpoints: the last two kept, each complete.
    assert latest_checkpoint(out).name == "step_00000008"
    assert len(list((out / "checkpoints").iterdir())) == 2
    # The saved model is the trained one and explains exactly.
    loaded = bcosify.load(out / "model")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
    assert float(bcosify.explain(loaded, x).completeness_error.max()) < 1e-4
    # Training moved the weights and lowered the training loss.
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[1]) for r in rows[1:] if r.split(",")[1]]
    assert len(losses) == 8 and min(losses[-3:]) < losses[0]


def test_output_directory_is_never_overwritten_silently(tmp_path, folder):
    out = tmp_path / "run"
    args = [f"data.root={folder}", f"output={out}", "train.max_steps=1", *FAST]
    finetune(TINY, args)
    before = (out / "model" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="--overwrite"):
        finetune(TINY, args)
    assert (out / "model" / "model.safetensors").read_bytes() == before
    finetune(TINY, [*args, "train.seed=1"], overwrite=True)
    assert (out / "model" / "model.safetensors").read_bytes() != before
    # A directory that is not a run is never deleted, even with overwrite.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(TrainingError, match="refusing"):
        finetune(TINY, [f"data.root={folder}", f"output={other}", *FAST], overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        finetune(TINY, [f"data.root={folder}", f"output={tmp_path / 'new'}", *FAST], resume=True)


class _Diverge:
    """Makes the weights non-finite after step 2, as a diverging run would."""

    def on_step_end(self, state, model):
        if state.global_step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, folder):
    out = tmp_path / "run"
    overrides = [f"data.root={folder}", f"output={out}", "train.checkpoint_every_steps=1", *FAST]
    with pytest.raises(TrainingError, match=r"loss became nan .*step_00000002.*--resume"):
        finetune(TINY, overrides, callbacks=[_Diverge()])
    last = latest_checkpoint(out)
    assert last.name == "step_00000002"
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # The run goes on from there.
    result = finetune(TINY, overrides, resume=True)
    assert result.global_step == 8


def test_distillation_needs_no_labels(tmp_path, folder):
    out = tmp_path / "run"
    result = finetune(
        TINY,
        [
            f"data.root={folder}",
            f"output={out}",
            "train.loss=distill",
            "model.num_classes=null",
            "train.max_steps=3",
            "data.augment.randaugment=rand-m9-n2",
            *FAST,
        ],
    )
    assert result.global_step == 3
    assert result.model.bcosify_num_classes == 1000  # the source's head, the teacher's classes
    assert "val/loss" in json.loads((out / "metrics.json").read_text())[-1]


def _small_source() -> torch.nn.Module:
    """A seeded conv-BN-ReLU-pool-linear classifier with 3 classes, in eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()


def test_custom_model_and_teacher_from_python(tmp_path):
    from bcosify.sources import demo_photos

    source = _small_source()
    model = bcosify.convert(source, mean=(0.5,) * 3, std=(0.5,) * 3)
    photos = [(image, i % 3) for i, (_, image) in enumerate(demo_photos())]
    teacher_before = [p.detach().clone() for p in source.parameters()]
    student_before = [p.detach().clone() for p in model.parameters()]
    result = finetune(
        {
            "data": {"image_size": 32, "batch_size": 2, "num_workers": 0},
            "train": {"epochs": 1, "loss": "distill"},
            "output": str(tmp_path / "r"),
            "log": {"trackers": ["csv"], "explain_images": 1},
        },
        model=model,
        teacher=source,
        train_dataset=photos,
        val_dataset=photos[:2],
    )
    assert result.global_step == 3
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), teacher_before))
    assert not all(torch.equal(a, b) for a, b in zip(result.model.parameters(), student_before))
    assert (tmp_path / "r" / "explanations" / "epoch_001" / "image_0.png").is_file()


# ---------------------------------------------------------------------------- processes
def test_resume_after_sigkill_gives_the_uninterrupted_weights(tmp_path, folder):
    """SIGKILL mid-epoch (after step 7 of 8, last checkpoint at step 6), then --resume: the final
    weights equal those of an uninterrupted run bit for bit. MobileNetV3 has dropout and the
    recipe RandAugment, so the global and the per-sample RNG streams are both exercised."""
    common = ["model.source=mobilenet_v3_small", "data.augment.randaugment=rand-m9-n2", *FAST]
    ref = _worker(str(TINY), str(tmp_path / "ref"), str(folder), *common)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    killed = _worker(str(TINY), str(run), str(folder), "--kill-after-step", "7", *common)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert latest_checkpoint(run).name == "step_00000006"
    assert not (run / "model").exists()

    resumed = _worker(str(TINY), str(run), str(folder), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (tmp_path / "ref" / "metrics.json").read_text()
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_two(out: Path, digests: Path, folder: Path, *overrides: str):
    """The tiny recipe under torchrun with 2 CPU processes (4 images per process and step); each
    rank writes a digest of its final weights to ``digests``. Fails the test if the run fails."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(TINY),
        str(out),
        str(folder),
        "--digest-dir",
        str(digests),
        "data.batch_size=4",
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_processes_gloo(tmp_path, folder):
    """torchrun, 2 CPU processes: both ranks end with identical weights, metrics logged once."""
    out, digests = tmp_path / "run", tmp_path / "digests"
    proc = _torchrun_two(out, digests, folder, *FAST)
    ranks = sorted(p.name for p in digests.iterdir())
    assert ranks == ["rank0.txt", "rank1.txt"]
    assert (digests / "rank0.txt").read_text() == (digests / "rank1.txt").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    # 32 images, 4 per process and step, 2 processes: 4 steps per epoch, each logged once.
    steps = [r.split(",")[0] for r in (out / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "4", "5", "6", "7", "8", "8"]  # train rows + 2 val rows
    assert metrics[-1]["step"] == 8
    assert proc.stdout.count("epoch 2:") == 1


# ---------------------------------------------------------------------------- CLI
def test_cli_finetune(tmp_path, folder, capsys):
    out = tmp_path / "run"
    args = [
        "finetune",
        str(TINY),
        "--data.root",
        str(folder),
        "--output",
        str(out),
        "--train.max_steps=2",
        "--log.explain_images",
        "0",
    ]
    assert main(args) == 0
    assert (out / "model" / "config.json").is_file()
    assert "fine-tuned model written to" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["finetune", str(TINY), "--train.epocs", "2"]) == 2
    assert "did you mean train.epochs" in capsys.readouterr().err
    assert main(["finetune", str(TINY), "--train.epochs"]) == 2
    assert "needs a value" in capsys.readouterr().err


def test_training_options_together(tmp_path, folder):
    """SGD with warmup, AGC, gradient accumulation, bf16 autocast, EMA, cross-entropy, mixup and
    TensorBoard in one short run."""
    out = tmp_path / "run"
    result = finetune(
        TINY,
        [
            f"data.root={folder}",
            f"output={out}",
            "optim.name=sgd",
            "optim.lr=0.01",
            "optim.warmup_steps=4",
            "optim.schedule=constant",
            "train.agc=0.01",
            "train.grad_accum_steps=2",
            "train.mixed_precision=bf16",
            "train.ema_decay=0.9",
            "train.loss=ce",
            "data.augment.mixup=0.2",
            "train.max_steps=3",
            "log.trackers=[csv, tensorboard]",
            "log.explain_images=0",
        ],
    )
    assert result.global_step == 3
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = [r.split(",")[header.index("train/lr")] for r in rows[1:]]
    lrs = [float(v) for v in column if v]
    # logged after each step: the lr of the next one, warming up over 4 steps (1/4 for the first)
    assert lrs == pytest.approx([0.005, 0.0075, 0.01])
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    # The saved model is the EMA, not the raw weights of the last checkpoint.
    saved = bcosify.load(out / "model").state_dict()
    raw = load_file(str(latest_checkpoint(out) / "model.safetensors"))
    assert latest_checkpoint(out).name == "step_00000003"
    assert saved.keys() == raw.keys()
    assert not all(torch.equal(saved[k], raw[k]) for k in raw)


def test_finetune_a_saved_model_dir(tmp_path, folder):
    source = bcosify.build_model("resnet18", weights="none", num_classes=4)
    bcosify.save(bcosify.convert(source), tmp_path / "converted")
    out = tmp_path / "run"
    result = finetune(
        TINY,
        [
            "model.source=null",
            f"model.model_dir={tmp_path / 'converted'}",
            "model.num_classes=null",
            f"data.root={folder}",
            f"output={out}",
            "train.max_steps=2",
            *FAST,
        ],
    )
    assert result.global_step == 2 and result.model.bcosify_num_classes == 4
    with pytest.raises(RecipeError, match="label is 7 but the model has 4 outputs"):
        finetune(
            TINY,
            [
                "model.source=null",
                f"model.model_dir={tmp_path / 'converted'}",
                "model.num_classes=null",
                f"data.root={folder}",
                f"output={tmp_path / 'r2'}",
                "train.loss=bce",
                *FAST,
            ],
            train_dataset=[(Image.new("RGB", (8, 8)), i) for i in range(8)],
        )


def test_hub_dataset_offline_error():
    with pytest.raises(RecipeError, match="could not load the hub dataset"):
        build_datasets(DataSection(backend="hf", hf_name="no-such-user/no-such-dataset"))


def test_streaming_hf_imagefolder(tmp_path, folder):
    """A streamed dataset has no length: the run is bounded by train.max_steps."""
    overrides = [
        f"data.root={folder}",
        f"output={tmp_path / 'run'}",
        "data.backend=hf-imagefolder",
        "data.streaming=true",
        *FAST,
    ]
    with pytest.raises(RecipeError, match="max_steps"):
        finetune(TINY, overrides)
    assert not (tmp_path / "run").exists()  # a recipe error writes nothing
    result = finetune(TINY, [*overrides, "train.max_steps=3"])
    assert result.global_step == 3
    assert "val/top1" in result.metrics[-1]


def test_more_bad_inputs_name_the_fix(tmp_path, folder, capsys):
    base = [f"data.root={folder}", *FAST]
    with pytest.raises(RecipeError, match="lower data.batch_size"):
        finetune(TINY, [*base, f"output={tmp_path / 'a'}", "data.batch_size=64"])
    with pytest.raises(RecipeError, match="mixup/cutmix need labels"):
        finetune(
            TINY,
            [
                *base,
                f"output={tmp_path / 'b'}",
                "train.loss=distill",
                "model.num_classes=null",
                "data.augment.mixup=0.2",
            ],
        )
    source = bcosify.build_model("resnet18", weights="none", num_classes=4)
    bcosify.save(bcosify.convert(source), tmp_path / "random")
    with pytest.raises(RecipeError, match="set train.distill.teacher"):
        finetune(
            TINY,
            [
                *base,
                f"output={tmp_path / 'c'}",
                "model.source=null",
                "model.num_classes=null",
                f"model.model_dir={tmp_path / 'random'}",
                "train.loss=distill",
            ],
        )
    assert not any((tmp_path / n).exists() for n in "abc")  # nothing written on bad input
    assert main(["demo", "--finetune-epochs", "-1", "--out", str(tmp_path / "d")]) == 2
    assert "--finetune-epochs must be >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- alignment
ALIGN = ["train.loss=align", "model.num_classes=null", *FAST]


def _csv_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_align_finetune_with_bf16_and_ema(tmp_path, folder):
    """train.loss align: the feature distance falls, per-node distances and the agreement with
    the teacher are logged per step, the taps leave the returned and the saved model."""
    out = tmp_path / "run"
    result = finetune(
        TINY,
        [
            f"data.root={folder}",
            f"output={out}",
            *ALIGN,
            "train.epochs=3",
            "train.eval_every_steps=2",
            "train.mixed_precision=bf16",
            "train.ema_decay=0.5",
            "train.align.logit_start_step=4",
            "train.align.weights={layer4.1: 2.0}",
        ],
    )
    rows = [r for r in _csv_rows(out) if r.get("train/feature")]
    assert len(rows) == result.global_step == 12
    first, last = float(rows[0]["train/feature"]), float(rows[-1]["train/feature"])
    assert last < 0.8 * first, (first, last)
    assert {"align/layer1.0", "align/layer4.1", "train/logit"} <= set(rows[0])
    # the logit term joins at step 4: before it the loss is the feature term alone
    for r in rows:
        parts = float(r["train/feature"]) + (float(r["train/logit"]) if int(r["step"]) > 4 else 0)
        assert abs(float(r["train/loss"]) - parts) < 1e-3 * max(1.0, parts), r
    agree = [r for r in _csv_rows(out) if r.get("val/agree")]
    assert [int(r["step"]) for r in agree] == [2, 4, 6, 8, 10, 12]  # eval every 2 steps
    assert not any("align_tap" in n for n, _ in result.model.named_children())
    assert "align_tap" not in result.model.code
    loaded = bcosify.load(result.model_dir)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), result.model(x))
    assert (out / "curves.png").is_file()


def test_align_bad_nodes_fail_before_anything_is_written(tmp_path, folder):
    out = tmp_path / "run"
    with pytest.raises(RecipeError, match="layer3"):
        finetune(
            TINY, [f"data.root={folder}", f"output={out}", *ALIGN, "train.align.nodes=[layer33]"]
        )
    assert not out.exists()


def test_align_failed_run_leaves_the_given_model_untouched(tmp_path, folder):
    from bcosify.sources import demo_photos

    source = torchvision_resnet18_eval()
    model = bcosify.convert(source, mean=(0.5,) * 3, std=(0.5,) * 3)
    code = model.code
    photos = [(image, 0) for _, image in demo_photos()]

    class Boom:
        def on_step_end(self, state, model):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        finetune(
            {
                "data": {"image_size": 32, "batch_size": 2, "num_workers": 0},
                "train": {"epochs": 1, "loss": "align"},
                "output": str(tmp_path / "r"),
                "log": {"trackers": ["csv"], "explain_images": 0},
            },
            model=model,
            teacher=source,
            train_dataset=photos,
            callbacks=[Boom()],
        )
    assert model.code == code


def torchvision_resnet18_eval():
    import torchvision

    return torchvision.models.resnet18().eval()


def test_align_resume_after_sigkill_and_two_processes(tmp_path, folder):
    """Alignment under the process tests of the loop: SIGKILL + --resume gives the uninterrupted
    weights, and two gloo processes end with identical weights."""
    # the logit term joins at step 3: before it, DDP must still see a gradient for every
    # parameter (the head after the last aligned block)
    common = [*ALIGN, "train.epochs=1", "train.align.logit_start_step=3"]
    ref = _worker(str(TINY), str(tmp_path / "ref"), str(folder), *common)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "killed"
    killed = _worker(str(TINY), str(run), str(folder), "--kill-after-step", "3", *common)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _worker(str(TINY), str(run), str(folder), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)

    out, digests = tmp_path / "ddp", tmp_path / "digests"
    _torchrun_two(out, digests, folder, *common)
    assert (digests / "rank0.txt").read_text() == (digests / "rank1.txt").read_text()
    rows = _csv_rows(out)
    assert [r["step"] for r in rows if r.get("train/feature")] == ["1", "2", "3", "4"]
    assert float(rows[-2]["train/feature"]) < float(rows[0]["train/feature"])


# ---------------------------------------------------------------------------- the maths of a step
def _hand_adamw_run(model, x, y, steps, lr, wd, betas=(0.9, 0.999), eps=1e-8, agc=None):
    """``steps`` AdamW steps on BCE-with-off-targets, written out by hand (and AGC as in
    Brock et al. 2021: unit-wise gradient norms clipped to ``agc`` x the unit-wise weight norm,
    weight norms floored at 1e-3)."""
    from bcosify.train.losses import BCEWithOffTargets

    loss_fn = BCEWithOffTargets(model.bcosify_num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]

    def unitwise(t):
        return t.norm() if t.ndim <= 1 else t.flatten(1).norm(dim=1).view(-1, *[1] * (t.ndim - 1))

    model.train()
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if agc is not None:
                    limit = unitwise(p).clamp(min=1e-3) * agc
                    norm = unitwise(g)
                    g = torch.where(norm < limit, g, g * (limit / norm.clamp(min=1e-6)))
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                p.mul_(1 - lr * wd)
                m_hat = m[i] / (1 - betas[0] ** t)
                v_hat = v[i] / (1 - betas[1] ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return model


@pytest.mark.parametrize("agc", [None, 0.01])
def test_three_steps_equal_hand_written_adamw(tmp_path, agc):
    import copy

    from torchvision.transforms.functional import to_tensor

    source = _small_source()
    model = bcosify.convert(source, mean=(0.5,) * 3, std=(0.5,) * 3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = [Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()) for _ in range(8)]
    data = [(im, i % 3) for i, im in enumerate(images)]
    expected = _hand_adamw_run(
        copy.deepcopy(model),
        torch.stack([to_tensor(im) for im in images]),
        torch.tensor([i % 3 for i in range(8)]),
        steps=3,
        lr=1e-2,
        wd=0.05,
        agc=agc,
    )
    result = finetune(
        {
            "data": {
                "image_size": 16,
                "eval_resize": 16,
                "batch_size": 8,  # one batch per epoch: the order of the images plays no role
                "num_workers": 0,
                "augment": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0},
            },
            "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05, "schedule": "constant"},
            "train": {"epochs": 3, "loss": "bce", "cpu": True, "agc": agc},
            "output": str(tmp_path / "r"),
            "log": {"trackers": ["csv"], "explain_images": 0},
        },
        model=model,
        train_dataset=data,
    )
    assert result.global_step == 3
    for (name, p), q in zip(result.model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    # it trained, by more than the tolerance
    assert (
        max(float((p.detach() - start[n]).abs().max()) for n, p in expected.named_parameters())
        > 1e-3
    )


def test_finetune_a_published_bcos_model(tmp_path, folder):
    """model.source bcos-v2/NAME: built converted (here with random weights), fine-tuned as
    it is; conversion options do not apply to it."""
    common = ["model.source=bcos-v2/resnet18", f"data.root={folder}", *FAST]
    result = finetune(TINY, [*common, f"output={tmp_path / 'run'}", "train.max_steps=2"])
    assert result.global_step == 2 and result.model.bcosify_num_classes == 4
    assert result.model.bcosify_source["zoo"] == "bcos-v2/resnet18"
    assert bcosify.load(tmp_path / "run" / "model").bcosify_source["zoo"] == "bcos-v2/resnet18"
    with pytest.raises(RecipeError, match="do not apply"):
        finetune(TINY, [*common, f"output={tmp_path / 'r2'}", "model.config.b=1.5"])


# ---------------------------------------------------------------- train.compile
class _Snapshots:
    def __init__(self):
        self.weights = []

    def on_step_end(self, state, model):
        self.weights.append(model.fc.weight.detach().clone())


def _compile_run(tmp_path, folder, backend: str, name: str, callbacks=()):
    out = tmp_path / name
    overrides = [
        f"data.root={folder}",
        f"output={out}",
        f"train.compile={backend}",
        "train.max_steps=3",
        "log.explain_images=0",
        "log.progress_bar=false",
    ]
    return finetune(TINY, overrides, callbacks=callbacks)


def test_train_compile_trains_the_compiled_forward(tmp_path, folder):
    """train.compile with a real torch.compile backend: dynamo compiles the training forward
    (frames counted), the parameters it trains are the student's, and the saved model is a
    plain bcosify model that explains exactly."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    snapshots = _Snapshots()
    result = _compile_run(tmp_path, folder, "aot_eager", "compiled", [snapshots])
    assert counters["frames"]["ok"] > 0
    assert result.global_step == 3
    # the gradients of the compiled forward reach the student's parameters (AdamW skips a
    # parameter without a gradient)
    assert not torch.equal(snapshots.weights[0], snapshots.weights[-1])
    model = bcosify.load(result.model_dir)
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    e = bcosify.explain(model.double(), torch.rand(2, 3, 32, 32, dtype=torch.float64))
    assert e.pixel_completeness_error.max() < 1e-8


def test_train_compile_falls_back_to_eager_with_a_message(tmp_path, folder, capsys):
    """A backend that fails to compile (registered with torch._dynamo, as a broken compiler
    would fail) does not stop the run: it trains eagerly and says why."""
    from torch._dynamo import register_backend

    @register_backend(name="bcosify_test_broken")
    def broken(gm, example_inputs):
        raise RuntimeError("this compiler is broken on purpose")

    torch._dynamo.reset()
    result = _compile_run(tmp_path, folder, "bcosify_test_broken", "fallback")
    assert result.global_step == 3
    out = capsys.readouterr().out
    assert "train.compile: torch.compile failed" in out
    assert "broken on purpose" in out and "training continues eagerly" in out


def test_train_compile_unknown_backend(tmp_path, folder):
    with pytest.raises(RecipeError, match="unknown torch.compile backend 'no_such_backend'"):
        _compile_run(tmp_path, folder, "no_such_backend", "unknown")
