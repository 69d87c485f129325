"""The tests' trained models (tests/conftest.py): their recipe, its fingerprint, and the committed weights.

Three kinds: the tiny ViT and Swin trained on the shapes until they have learnt them (``vit``, ``swin``), and the
tiny ViT trained on shapes that carry a class-coded watermark in 90 % of the images (``vit_shortcut``,
:func:`train_with_shortcut`): it learns the watermark, not the shape, and is what a monitor must catch.

The suite loads the weights committed under ``tests/fixtures/`` (``shapes_<kind>_seed<seed>.pt``, with a JSON
manifest beside each: the recipe's hash, the steps taken, the held-out accuracy, the versions that trained them).
``make fixtures`` re-trains them (one thread each, side by side, 2-3 minutes) and rewrites them; do so whenever
:func:`recipe_hash` changes: the source of ``lightning_vitx/data/training.py`` (models, optimiser, schedule, stopping
rule), the images the recipe reads (a fingerprint of the training and held-out samples), the seed, the step budget
and the accuracy gate (for ``vit_shortcut`` also :func:`train_with_shortcut`'s source, the watermark's share and how
often the gate is checked). ``tests/data/test_fixture_weights.py`` fails, naming ``make fixtures``, when they
disagree.

By hand: ``python tests/fixture_training.py swin --seed 0 --out swin.pt`` (train and save a state dict), or
``python tests/fixture_training.py swin --write-fixture`` (train and commit-ready files under tests/fixtures/).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
from pathlib import Path

import torch
from torch import nn

import lightning_vitx.data.training as training
from lightning_vitx.data import (
    SHAPES_IMAGE_SIZES,
    ShapesDataset,
    ShapesTraining,
    held_out_accuracy,
    tiny_vit_for_shapes,
    train_on_shapes,
    trained_on_shapes,
)
from lightning_vitx.data.shapes import shortcut_mask

FIXTURES = Path(__file__).with_name("fixtures")
TARGET_ACCURACY = 0.85  # held-out top-1 on 256 images (chance: 0.33)
MAX_STEPS = 1500
KINDS = ("vit", "swin", "vit_shortcut")
# vit_shortcut: the watermark on 90 % of the training images, the gate on 256 held-out images that all carry it,
# checked every 300 steps. The watermark is learnt by step 50 (cued accuracy 1.0, un-cued 0.35: chance); at 300 the
# model still follows it (un-cued ~0.45, a conflicting watermark decides ~all predictions) and its maps are sharper.
SHORTCUT_SHARE = 0.9
SHORTCUT_TARGET_ACCURACY = 0.99
SHORTCUT_CHECK_EVERY = 300


def model_kind(kind: str) -> str:
    """The architecture of a fixture kind: ``vit`` or ``swin``."""
    return "vit" if kind == "vit_shortcut" else kind


def default_target(kind: str) -> float:
    return SHORTCUT_TARGET_ACCURACY if kind == "vit_shortcut" else TARGET_ACCURACY


def recipe_data(kind: str, seed: int, max_steps: int = MAX_STEPS) -> tuple[ShapesDataset, ShapesDataset]:
    """The training samples (fresh every step) and the held-out samples of the gate, as the recipe reads them."""
    size = SHAPES_IMAGE_SIZES[model_kind(kind)]
    if kind == "vit_shortcut":
        train = ShapesDataset(64 * max_steps, size, seed=seed, shortcut=SHORTCUT_SHARE)
        return train, ShapesDataset(256, size, seed=10_000 + seed, shortcut=1.0)
    return ShapesDataset(64 * max_steps, size, seed=seed), ShapesDataset(256, size, seed=10_000 + seed)


def train_with_shortcut(seed: int, max_steps: int = MAX_STEPS, target_accuracy: float | None = None) -> ShapesTraining:
    """The ``vit_shortcut`` recipe: the clean ViT's (model, optimiser, schedule, learning rate), on watermarked data.

    Stops at the first check (every ``SHORTCUT_CHECK_EVERY`` steps) where the accuracy on 256 held-out images that
    all carry the watermark reaches ``target_accuracy``; raises after ``max_steps``.
    """
    train, held_out = recipe_data("vit_shortcut", seed, max_steps)
    return train_on_shapes(
        tiny_vit_for_shapes(SHAPES_IMAGE_SIZES["vit"], seed=seed),
        train,
        max_steps=max_steps,
        held_out=held_out,
        target_accuracy=default_target("vit_shortcut") if target_accuracy is None else target_accuracy,
        check_every=SHORTCUT_CHECK_EVERY,
        lr=training._SHAPES_LEARNING_RATES["vit"],
    )


def train(kind: str, seed: int, max_steps: int = MAX_STEPS, target_accuracy: float | None = None) -> ShapesTraining:
    """Train the recipe of ``kind``; ``target_accuracy`` defaults to the kind's gate."""
    if kind == "vit_shortcut":
        return train_with_shortcut(seed, max_steps, target_accuracy)
    gate = default_target(kind) if target_accuracy is None else target_accuracy
    return trained_on_shapes(kind, seed, max_steps, gate)  # type: ignore[arg-type]


def shortcut_reliance(model: nn.Module, seed: int = 0) -> dict[str, float]:
    """How much ``model`` (the 64 px ViT) rests on the watermark, on the gate's 256 held-out images (seed
    ``10000 + seed``): top-1 with the watermark (``cued``), on the same images without it (``uncued``: the draws
    of the watermark have their own stream, so the rest of each image is the same), and the share of predictions
    that follow another class's watermark drawn on them (``follows_conflicting_cue``)."""
    size = SHAPES_IMAGE_SIZES["vit"]
    cued, uncued = (
        ShapesDataset(256, size, seed=10_000 + seed, shortcut=1.0),
        ShapesDataset(256, size, seed=10_000 + seed),
    )
    labels = torch.tensor([uncued[i][1] for i in range(len(uncued))])
    images = {
        name: torch.stack([data[i][0] for i in range(len(data))]) for name, data in (("cued", cued), ("uncued", uncued))
    }
    decoys = (labels + 1) % len(ShapesDataset.classes)
    conflicting = images["uncued"].clone()
    for image, decoy in zip(conflicting, decoys.tolist(), strict=True):
        image[:, shortcut_mask(decoy, size)] = (1.0 - uncued.mean) / uncued.std  # the watermark's white, normalised
    return {
        "cued": held_out_accuracy(model, images["cued"], labels),
        "uncued": held_out_accuracy(model, images["uncued"], labels),
        "follows_conflicting_cue": held_out_accuracy(model, conflicting, decoys),
    }


def data_fingerprint(kind: str, seed: int, max_steps: int = MAX_STEPS, samples: int = 32) -> str:
    """SHA-256 of the first ``samples`` training and held-out samples the recipe reads (images and labels)."""
    digest = hashlib.sha256()
    for data in recipe_data(kind, seed, max_steps):
        for index in range(samples):
            image, label, _ = data[index]
            digest.update(image.numpy().tobytes())
            digest.update(str(label).encode())
    return digest.hexdigest()


def recipe_hash(
    kind: str,
    seed: int,
    max_steps: int = MAX_STEPS,
    target_accuracy: float | None = None,
    source: str | None = None,
) -> str:
    """What the committed weights were trained from: the recipe module's source (``source`` overrides it, for
    tests), the data's fingerprint, the kind, seed, step budget and accuracy gate (default: the kind's); for
    ``vit_shortcut`` also :func:`train_with_shortcut`'s source, the watermark's share and the gate's interval."""
    if source is None:
        source = Path(training.__file__).read_text()
    if target_accuracy is None:
        target_accuracy = default_target(kind)
    digest = hashlib.sha256(source.encode())
    digest.update(data_fingerprint(kind, seed, max_steps).encode())
    recipe: tuple = (kind, seed, max_steps, target_accuracy)
    if kind == "vit_shortcut":
        digest.update(inspect.getsource(train_with_shortcut).encode())
        recipe += (SHORTCUT_SHARE, SHORTCUT_CHECK_EVERY)
    digest.update(repr(recipe).encode())
    return digest.hexdigest()


def weights_path(kind: str, seed: int) -> Path:
    return FIXTURES / f"shapes_{kind}_seed{seed}.pt"


def manifest_path(kind: str, seed: int) -> Path:
    return weights_path(kind, seed).with_suffix(".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fixture(kind: str, seed: int) -> None:
    """Train the recipe and write its weights and manifest under tests/fixtures/."""
    import timm

    run = train(kind, seed)
    FIXTURES.mkdir(exist_ok=True)
    path = weights_path(kind, seed)
    torch.save(run.model.state_dict(), path)
    manifest = {
        "kind": kind,
        "seed": seed,
        "recipe_hash": recipe_hash(kind, seed),
        "weights_sha256": file_sha256(path),
        "steps": run.steps,
        "held_out_accuracy": run.accuracy,
        "max_steps": MAX_STEPS,
        "target_accuracy": default_target(kind),
        **(
            {"shortcut": SHORTCUT_SHARE, "reliance": shortcut_reliance(run.model, seed)}
            if kind == "vit_shortcut"
            else {}
        ),
        "trained_with": {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads()},
    }
    manifest_path(kind, seed).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path.name}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--target-accuracy", type=float, default=None, help="default: the kind's gate")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="where to save the state dict")
    target.add_argument("--write-fixture", action="store_true", help="write tests/fixtures/ (recipe defaults)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_fixture:
        write_fixture(args.kind, args.seed)
        return
    run = train(args.kind, args.seed, args.max_steps, args.target_accuracy)
    torch.save(run.model.state_dict(), args.out)
    print(f"trained the tiny {args.kind} of seed {args.seed}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}")


if __name__ == "__main__":
    main()
