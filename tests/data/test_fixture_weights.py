"""The committed weights of the trained fixtures (tests/fixtures/) match their recipe and still pass its gate.

The default suite loads them instead of training; these tests keep that honest. When the recipe changes
(lightning_vitx/data/training.py, the images it reads, its seed, budget or gate), the hash test fails until
``make fixtures`` rewrites the weights. The ``retrain`` test (run by .ci/run, not by ``make test``) trains the
recipes again from scratch and checks they still reach their gates (and that the shortcut ViT still follows its
watermark).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from lightning_vitx.data import (
    SHAPES_IMAGE_SIZES,
    ShapesDataset,
    held_out_accuracy,
    tiny_swin_for_shapes,
    tiny_vit_for_shapes,
)

KINDS = ["vit", "swin", "vit_shortcut"]


@pytest.mark.parametrize("kind", KINDS)
def test_committed_weights_match_the_recipe(kind, fixture_recipe):
    manifest = json.loads(fixture_recipe.manifest_path(kind, 0).read_text())
    assert manifest["weights_sha256"] == fixture_recipe.file_sha256(fixture_recipe.weights_path(kind, 0)), (
        f"tests/fixtures/shapes_{kind}_seed0.pt is not the file its manifest describes: run `make fixtures`"
    )
    assert manifest["recipe_hash"] == fixture_recipe.recipe_hash(kind, 0), (
        f"the {kind} fixture's recipe changed since its weights were trained: run `make fixtures` and commit "
        "tests/fixtures/"
    )


def test_the_recipe_hash_follows_the_source_the_data_and_the_gate(fixture_recipe):
    source = Path(fixture_recipe.training.__file__).read_text()
    reference = fixture_recipe.recipe_hash("vit", 0, source=source)
    assert reference == fixture_recipe.recipe_hash("vit", 0)
    changed = source.replace("lr: float = 2e-3", "lr: float = 3e-3")
    assert changed != source and fixture_recipe.recipe_hash("vit", 0, source=changed) != reference
    assert fixture_recipe.recipe_hash("vit", 1, source=source) != reference  # other data, other seed
    assert fixture_recipe.recipe_hash("vit", 0, target_accuracy=0.9, source=source) != reference
    assert fixture_recipe.recipe_hash("swin", 0, source=source) != reference
    assert fixture_recipe.recipe_hash("vit_shortcut", 0, source=source) != reference  # watermarked data, its gate


def test_the_shortcut_recipe_hash_follows_its_share(fixture_recipe, monkeypatch):
    reference = fixture_recipe.recipe_hash("vit_shortcut", 0)
    monkeypatch.setattr(fixture_recipe, "SHORTCUT_SHARE", 0.5)
    assert fixture_recipe.recipe_hash("vit_shortcut", 0) != reference


def test_a_change_in_the_data_changes_the_fingerprint(fixture_recipe, monkeypatch):
    reference = fixture_recipe.data_fingerprint("vit", 0, samples=4)
    original = ShapesDataset.__getitem__

    def brighter(self, index):
        image, label, mask = original(self, index)
        return image + 1e-3, label, mask

    monkeypatch.setattr(ShapesDataset, "__getitem__", brighter)
    assert fixture_recipe.data_fingerprint("vit", 0, samples=4) != reference


def _committed(kind, fixture_recipe):
    size = SHAPES_IMAGE_SIZES[fixture_recipe.model_kind(kind)]
    model = (tiny_swin_for_shapes if kind == "swin" else tiny_vit_for_shapes)(size, seed=0)
    model.load_state_dict(torch.load(fixture_recipe.weights_path(kind, 0), weights_only=True))
    return model.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_committed_weights_pass_the_accuracy_gate(kind, fixture_recipe):
    model = _committed(kind, fixture_recipe)
    _, held_out = fixture_recipe.recipe_data(kind, 0)  # vit_shortcut: every image carries the watermark
    images = torch.stack([held_out[i][0] for i in range(len(held_out))])
    labels = torch.tensor([held_out[i][1] for i in range(len(held_out))])
    accuracy = held_out_accuracy(model, images, labels)
    assert accuracy >= fixture_recipe.default_target(kind)
    recorded = json.loads(fixture_recipe.manifest_path(kind, 0).read_text())["held_out_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=2 / 256)  # another thread count may flip a borderline image


def test_the_shortcut_fixture_follows_the_watermark_not_the_shape(fixture_recipe):
    reliance = fixture_recipe.shortcut_reliance(_committed("vit_shortcut", fixture_recipe))
    recorded = json.loads(fixture_recipe.manifest_path("vit_shortcut", 0).read_text())["reliance"]
    assert reliance == pytest.approx(recorded, abs=2 / 256)
    # Right with the watermark, near chance (1/3) without it, and another class's watermark decides its prediction.
    assert reliance["cued"] >= 0.99 and reliance["uncued"] < 0.6 and reliance["follows_conflicting_cue"] >= 0.9


@pytest.mark.retrain
def test_the_recipe_still_reaches_its_gate_from_scratch(fixture_recipe):
    """The recipes trained again, side by side on one thread each; train_on_shapes exits non-zero below the gate."""
    script = Path(fixture_recipe.__file__)
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        runs = {
            kind: subprocess.Popen(
                [sys.executable, str(script), kind, "--seed", "0", "--out", f"{folder}/{kind}.pt"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for kind in KINDS
        }
        for kind, process in runs.items():
            output, _ = process.communicate()  # bounded by the suite's timeout
            assert process.returncode == 0, f"the {kind} recipe no longer reaches its gate:\n{output[-3000:]}"
            print(output.strip())
        model = tiny_vit_for_shapes(SHAPES_IMAGE_SIZES["vit"], seed=0)
        model.load_state_dict(torch.load(f"{folder}/vit_shortcut.pt", weights_only=True))
        reliance = fixture_recipe.shortcut_reliance(model.eval())
        assert reliance["uncued"] < 0.6 and reliance["follows_conflicting_cue"] >= 0.9, reliance
