"""Shared fixtures: the covered timm models (pretrained=False), built once per session."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

NUM_CLASSES = 7

# name -> (timm model name, create_model kwargs, input size)
TINY_SWIN = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 4}
MODEL_CASES: dict[str, tuple[str, dict, int]] = {
    "vit": ("vit_tiny_patch16_224", {}, 224),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, 224),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}, 224),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}, 224),
    "vit448": ("vit_tiny_patch16_224", {"img_size": 448}, 448),
    # 72 / 4 = 18 tokens a side: windows of 4 need padding, the merges meet odd grids (9 -> 5), the last
    # stage (3x3) runs one unshifted window.
    "swin": ("swin_tiny_patch4_window7_224", {**TINY_SWIN, "img_size": 72}, 72),
}


def grid_for(case: str, size: int) -> tuple[int, int]:
    """The map grid the contract promises: the patch grid (16 px patches for ViT, Swin's first stage: 4 px)."""
    patch = 4 if MODEL_CASES[case][0].startswith("swin") else 16
    return (size // patch, size // patch)


def make_vit(name: str, seed: int = 0, depth: int | None = None, **kwargs) -> nn.Module:
    """A random-init timm model whose attention is peaked (random init is near uniform) and whose classes differ."""
    torch.manual_seed(seed)
    if depth is not None:
        kwargs["depth"] = depth
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():  # the attention modules, in block order
            if isinstance(getattr(module, "qkv", None), nn.Linear):
                module.qkv.weight.normal_(0.0, 0.1, generator=generator)
        heads = model.get_classifier()  # (head, head_dist) for distilled DeiT
        for head in heads if isinstance(heads, tuple) else (heads,):
            head.weight.normal_(0.0, 0.5, generator=generator)
    return model.eval()


@pytest.fixture(scope="session")
def models() -> dict[str, nn.Module]:
    return {case: make_vit(name, **kwargs) for case, (name, kwargs, _) in MODEL_CASES.items()}


@pytest.fixture(params=list(MODEL_CASES))
def model_case(request, models) -> tuple[str, nn.Module, int]:
    return request.param, models[request.param], MODEL_CASES[request.param][2]


@pytest.fixture
def fresh_vit() -> nn.Module:
    """A model a test may change (train mode, frozen params, hooks): its own copy."""
    return make_vit("vit_tiny_patch16_224", depth=4)


def images_for(size: int = 224, batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_images():
    return images_for


@pytest.fixture
def patch_grid():
    return grid_for


@pytest.fixture
def make_model():
    return make_vit


@pytest.fixture
def copy_model():
    return copy.deepcopy


# The trained fixtures: the tiny ViT and Swin trained on the synthetic shapes until they have learnt the task, so
# the tests on them do not rest on one run's weights (and a ViT that learnt a class-coded watermark instead of the
# shape, shapes_shortcut, for the tests that must catch it). Seed 0's weights are committed (tests/fixtures/, written by
# `make fixtures`; tests/data/test_fixture_weights.py checks they match the recipe) and loaded. LVX_FIXTURE_SEED
# picks another training seed, to check that the trained-model tests hold for any model that has learnt the task:
# one without committed weights is trained by tests/fixture_training.py in a process of its own, on one thread,
# from the moment the collected tests include one that requests it (1.5-2 minutes; the suite runs on meanwhile).
FIXTURE_SEED = int(os.environ.get("LVX_FIXTURE_SEED", "0"))


def _load_fixture_training():
    path = Path(__file__).with_name("fixture_training.py")
    spec = importlib.util.spec_from_file_location("lvx_fixture_training", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixture_training = _load_fixture_training()


class _TrainedFixture:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.process: subprocess.Popen | None = None
        self.folder = ""

    @property
    def committed(self) -> Path:
        return fixture_training.weights_path(self.kind, FIXTURE_SEED)

    def start(self) -> None:
        if self.process is None and not self.committed.is_file():
            self.folder = tempfile.mkdtemp(prefix=f"lvx-{self.kind}-")
            script = Path(__file__).with_name("fixture_training.py")
            command = [sys.executable, str(script), self.kind, "--seed", str(FIXTURE_SEED)]
            command += ["--out", f"{self.folder}/model.pt"]
            with open(f"{self.folder}/log.txt", "w") as log:
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def weights(self) -> Path:
        """The committed weights, or those trained in the background once that process has ended."""
        self.start()
        if self.process is None:
            return self.committed
        code = self.process.wait()  # bounded by the suite's timeout (pytest-timeout, pyproject.toml)
        if code != 0:
            log = Path(self.folder, "log.txt").read_text()
            raise RuntimeError(f"training the tiny {self.kind} fixture failed (exit {code}):\n{log[-3000:]}")
        return Path(self.folder, "model.pt")

    def result(self) -> nn.Module:
        """The trained model, in eval mode."""
        from lightning_vitx.data import SHAPES_IMAGE_SIZES, tiny_swin_for_shapes, tiny_vit_for_shapes

        kind = fixture_training.model_kind(self.kind)
        build = tiny_swin_for_shapes if kind == "swin" else tiny_vit_for_shapes
        model = build(SHAPES_IMAGE_SIZES[kind], seed=FIXTURE_SEED)
        model.load_state_dict(torch.load(self.weights(), weights_only=True))
        return model.eval()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


_TRAINING = {
    "shapes_model": _TrainedFixture("vit"),
    "shapes_swin": _TrainedFixture("swin"),
    "shapes_shortcut": _TrainedFixture("vit_shortcut"),
}


def pytest_collection_finish(session) -> None:
    for fixture, training in _TRAINING.items():
        if any(fixture in getattr(item, "fixturenames", ()) for item in session.items):
            training.start()


def pytest_sessionfinish(session, exitstatus) -> None:
    for training in _TRAINING.values():
        training.stop()


def _trained(fixture: str, shortcut: float | None = None):
    """The trained model of ``fixture`` and 96 held-out (images, labels, masks): disjoint from the training data
    (seed s) and the accuracy check (10000 + s), seed 20000 + s. With ``shortcut``, that share carries the watermark
    and the masks are the regions ``{"object": [96, H, W], "shortcut": [96, H, W]}``."""
    from lightning_vitx.data import SHAPES_IMAGE_SIZES, ShapesDataset

    training = _TRAINING[fixture]
    model = training.result()
    size = SHAPES_IMAGE_SIZES[fixture_training.model_kind(training.kind)]
    held_out = ShapesDataset(96, size, seed=20_000 + FIXTURE_SEED, shortcut=shortcut)
    samples = [held_out[i] for i in range(len(held_out))]
    images, labels = torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])
    if shortcut is None:
        return model, images, labels, torch.stack([s[2] for s in samples])
    return model, images, labels, {name: torch.stack([s[2][name] for s in samples]) for name in samples[0][2]}


@pytest.fixture(scope="session")
def shapes_model():
    """The tiny ViT trained on the synthetic shapes to 0.85 held-out accuracy (64 px), and 96 held-out samples."""
    return _trained("shapes_model")


@pytest.fixture(scope="session")
def shapes_swin():
    """The tiny Swin trained like ``shapes_model`` (56 px), and 96 held-out samples."""
    return _trained("shapes_swin")


@pytest.fixture(scope="session")
def shapes_shortcut():
    """The tiny ViT trained on shapes with a class-coded watermark on 90 % of the images, until it has learnt the
    watermark (not the shape: see tests/fixture_training.py), and 96 held-out samples that all carry it, with the
    regions ``{"object", "shortcut"}`` as masks."""
    return _trained("shapes_shortcut", shortcut=1.0)


@pytest.fixture(scope="session")
def fixture_recipe():
    """tests/fixture_training.py: the trained fixtures' recipe, its hash and the committed weights' paths."""
    return fixture_training
