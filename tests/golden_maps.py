"""Golden maps: every registered explainer's maps on five small models, fixed seeds, recorded once.

A refactor must not move any output. ``tests/explainers/test_golden_maps.py`` recomputes every map here and compares
it with ``tests/fixtures/golden_maps.pt``. Record them again only when an output is meant to change, and say why
in the commit::

    .venv/bin/python tests/golden_maps.py --write
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch import nn

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect

GOLDEN = Path(__file__).parent / "fixtures" / "golden_maps.pt"
SIZE = 32  # 4x4 patches of 8 px on the ViTs; 8x8 first-stage tokens of 4 px on the Swin (windows of 4, one merge)
VIT = {"img_size": SIZE, "patch_size": 8, "embed_dim": 16, "num_heads": 2, "depth": 2, "num_classes": 5}
CASES: dict[str, tuple[str, dict]] = {
    "vit": ("vit_tiny_patch16_224", VIT),
    "registers": ("vit_tiny_patch16_224", {**VIT, "reg_tokens": 2}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", VIT),
    "avgpool": ("vit_tiny_patch16_224", {**VIT, "class_token": False, "global_pool": "avg", "fc_norm": False}),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": SIZE, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4, "num_classes": 5},
    ),
}
# Options whose code paths the defaults do not take, recorded beside them.
VARIANTS: dict[str, dict] = {"attnlrp (cp)": {"attention_rule": "cp"}}
TARGET = torch.tensor([1, 3])


def build(case: str) -> nn.Module:
    """A random-init model with peaked attention and distinct classes (random init is near uniform)."""
    name, kwargs = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "qkv", None), nn.Linear):
                module.qkv.weight.normal_(0.0, 0.5, generator=generator)
        heads = model.get_classifier()
        for head in heads if isinstance(heads, tuple) else (heads,):
            head.weight.normal_(0.0, 0.5, generator=generator)
    return model


def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def explainers(model: nn.Module) -> dict[str, X.Explainer]:
    """Every registered explainer that takes the model, and the variants of ``VARIANTS``."""
    family = detect(model).family
    found = {name: X.create(name, model) for name in X.available() if family in X.get_info(name).families}
    for label, options in VARIANTS.items():
        base = label.split(" ")[0]
        if base in found:
            found[label] = X.create(base, model, **options)
    return found


def compute() -> dict[str, torch.Tensor]:
    """``{"<case>/<explainer>": maps, "<case>/<explainer>/pixels": pixel maps}`` for every case."""
    maps: dict[str, torch.Tensor] = {}
    batch = images()
    for case in CASES:
        model = build(case)
        for label, explainer in explainers(model).items():
            maps[f"{case}/{label}"] = explainer(batch, target=TARGET)
            if hasattr(explainer, "pixel_relevance"):
                maps[f"{case}/{label}/pixels"] = explainer.pixel_relevance(batch, target=TARGET)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"record the maps in {GOLDEN}")
    if parser.parse_args().write:
        maps = compute()
        torch.save(maps, GOLDEN)
        print(f"{len(maps)} maps written to {GOLDEN}")


if __name__ == "__main__":
    main()
