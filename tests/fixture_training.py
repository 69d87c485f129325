"""The tests' two trained models (tests/conftest.py): their recipe, its fingerprint, and the committed weights.

The suite loads the weights committed under ``tests/fixtures/`` (``shapes_<kind>_seed<seed>.pt``, with a JSON
manifest beside each: the recipe's hash, the steps taken, the held-out accuracy, the versions that trained them).
``make fixtures`` re-trains both (one thread each, side by side, 1.5-2 minutes) and rewrites them; do so whenever
:func:`recipe_hash` changes: the source of ``lightning_vitx/data/training.py`` (models, optimiser, schedule, stopping
rule), the images the recipe reads (a fingerprint of the training and held-out samples), the seed, the step budget
and the accuracy gate. ``tests/data/test_fixture_weights.py`` fails, naming ``make fixtures``, when they disagree.

By hand: ``python tests/fixture_training.py swin --seed 0 --out swin.pt`` (train and save a state dict), or
``python tests/fixture_training.py swin --write-fixture`` (train and commit-ready files under tests/fixtures/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

import lightning_vitx.data.training as training
from lightning_vitx.data import SHAPES_IMAGE_SIZES, ShapesDataset, trained_on_shapes

FIXTURES = Path(__file__).with_name("fixtures")
TARGET_ACCURACY = 0.85  # held-out top-1 on 256 images (chance: 0.33)
MAX_STEPS = 1500
KINDS = ("vit", "swin")


def data_fingerprint(kind: str, seed: int, max_steps: int = MAX_STEPS, samples: int = 32) -> str:
    """SHA-256 of the first ``samples`` training and held-out samples the recipe reads (images and labels)."""
    size = SHAPES_IMAGE_SIZES[kind]
    digest = hashlib.sha256()
    for data in (ShapesDataset(64 * max_steps, size, seed=seed), ShapesDataset(256, size, seed=10_000 + seed)):
        for index in range(samples):
            image, label, _ = data[index]
            digest.update(image.numpy().tobytes())
            digest.update(str(label).encode())
    return digest.hexdigest()


def recipe_hash(
    kind: str,
    seed: int,
    max_steps: int = MAX_STEPS,
    target_accuracy: float = TARGET_ACCURACY,
    source: str | None = None,
) -> str:
    """What the committed weights were trained from: the recipe module's source (``source`` overrides it, for
    tests), the data's fingerprint, the kind, seed, step budget and accuracy gate."""
    if source is None:
        source = Path(training.__file__).read_text()
    digest = hashlib.sha256(source.encode())
    digest.update(data_fingerprint(kind, seed, max_steps).encode())
    digest.update(repr((kind, seed, max_steps, target_accuracy)).encode())
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

    run = trained_on_shapes(kind, seed, MAX_STEPS, TARGET_ACCURACY)  # type: ignore[arg-type]
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
        "target_accuracy": TARGET_ACCURACY,
        "trained_with": {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads()},
    }
    manifest_path(kind, seed).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path.name}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--target-accuracy", type=float, default=TARGET_ACCURACY)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="where to save the state dict")
    target.add_argument("--write-fixture", action="store_true", help="write tests/fixtures/ (recipe defaults)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_fixture:
        write_fixture(args.kind, args.seed)
        return
    run = trained_on_shapes(args.kind, args.seed, args.max_steps, args.target_accuracy)
    torch.save(run.model.state_dict(), args.out)
    print(f"trained the tiny {args.kind} of seed {args.seed}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}")


if __name__ == "__main__":
    main()
