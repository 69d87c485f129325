"""Which explainer gives maps on which timm family: a markdown table, explainer x family, from tiny random models.

Each cell builds the explainer with ``lightning_vitx.explainers.create`` and runs it on a batch of two images and
on each image alone. A cell reads "maps" when the maps are finite, at the patch grid, not constant, and the batch
equals one by one (1e-5 of the map's scale); "refused: <reason>" when ``create`` raised (the reason shortened from
its message); "FAILED at call" when ``create`` accepted the model and the call raised or gave wrong maps (a bug:
the contract is to refuse at create). ``tests/adapters/test_coverage.py`` checks the same cells
(``coverage_cells``).

Usage::

    .venv/bin/python benchmarks/coverage.py            # every family
    .venv/bin/python benchmarks/coverage.py eva beit   # some families
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Literal

import timm
import torch
from torch import nn

import lightning_vitx.explainers as X

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SWIN = {"img_size": 32, "embed_dim": 24, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4}
IMAGE_SIZE = 32
NUM_CLASSES = 5

# family -> (timm model name, create_model kwargs, expected: "supported" or "refused")
FAMILIES: dict[str, tuple[str, dict, Literal["supported", "refused"]]] = {
    "vit": ("vit_tiny_patch16_224", TINY, "supported"),
    "deit": ("deit_tiny_distilled_patch16_224", TINY, "supported"),
    "swin": ("swin_tiny_patch4_window7_224", TINY_SWIN, "supported"),
    "eva": ("eva_giant_patch14_224", {**TINY, "mlp_ratio": 4.0}, "supported"),
    "eva02": ("eva02_tiny_patch14_224", TINY, "supported"),
    "beit": ("beit_base_patch16_224", TINY, "supported"),
    "vit_relpos": ("vit_relpos_small_patch16_224", TINY, "supported"),
    "vit_relpos_rpn": ("vit_relpos_small_patch16_rpn_224", TINY, "supported"),  # post-norm blocks
    "swinv2": ("swinv2_tiny_window8_256", TINY_SWIN, "supported"),  # post-norm blocks, cosine attention
    "cait": ("cait_xxs24_224", {**TINY, "depth_token_only": 1}, "supported"),
    "vit_map": ("vit_tiny_patch16_224", {**TINY, "class_token": False, "global_pool": "map"}, "supported"),
    "vit_hybrid": ("vit_tiny_r_s16_p8_224", {"img_size": IMAGE_SIZE, "depth": 2}, "refused"),
}

# Grad-CAM's ReLU of a head-weighted sum: on a random model every head's weight is negative for some images
# (a quarter of them with two heads), and the map is zero there by construction; any other constant map fails.
ZERO_BY_RELU = {"gradcam"}

# message pattern -> the table's short reason
REASONS = [
    (r"no adapter reads its architecture", "no adapter"),
    (r"supports \[.*\] models, got", "family outside its rules"),
    (r"post-norm", "post-norm blocks"),
    (r"statistics of LayerNorm", "no LayerNorm norm1/norm2"),
    (r"token states around each block are not read", "no token states (class attention)"),
    (r"global_pool='(\w*)' is not supported", "global_pool='{0}'"),
    (r"patch embedding is a (\w+)", "hybrid stem ({0})"),
]


@dataclass(frozen=True)
class Cell:
    """One explainer on one family's tiny model: ``status`` and, for a refusal or failure, the message."""

    family: str
    explainer: str
    status: Literal["maps", "refused", "failed"]
    message: str = ""

    @property
    def text(self) -> str:
        if self.status == "maps":
            return "maps"
        if self.status == "refused":
            return f"refused: {short_reason(self.message)}"
        return f"FAILED at call: {self.message[:80]}"


def short_reason(message: str) -> str:
    for pattern, reason in REASONS:
        found = re.search(pattern, message)
        if found:
            return reason.format(*found.groups())
    return message.split(":")[0][:60]


def build(family: str, seed: int = 0) -> nn.Module:
    """The family's tiny random model in eval mode: attention peaked (random init is near uniform), classes apart."""
    name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "qkv", None), nn.Linear):
                module.qkv.weight.normal_(0.0, 0.3, generator=generator)
        heads = model.get_classifier()  # (head, head_dist) for distilled DeiT; timm's EVA / BEiT heads start tiny
        for head in heads if isinstance(heads, tuple) else (heads,):
            if isinstance(head, nn.Linear):
                head.weight.normal_(0.0, 0.5, generator=generator)
        for key, param in model.named_parameters():
            if key.endswith("relative_position_bias_table"):  # zeros at init in BEiT: give them values
                param.normal_(0.0, 1.0, generator=generator)
            if key.endswith(("norm1.weight", "norm2.weight")) and not param.any():  # SwinV2's post-norms start at 0
                param.normal_(1.0, 0.1, generator=generator)
    return model.eval()


def images(batch: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def run_cell(family: str, model: nn.Module, name: str, batch: torch.Tensor) -> Cell:
    """Create ``name`` on ``model`` and check its maps (module docstring); never raises."""
    try:
        explainer = X.create(name, model)
    except (TypeError, ValueError) as error:
        return Cell(family, name, "refused", str(error))
    try:
        target = torch.arange(batch.shape[0]) % NUM_CLASSES
        maps = explainer(batch, target)
        single = torch.cat([explainer(batch[i : i + 1], target[i : i + 1]) for i in range(batch.shape[0])])
    except Exception as error:  # noqa: BLE001 - a call-time error is what the table reports
        return Cell(family, name, "failed", f"{type(error).__name__}: {error}")
    patch = 4 if family in ("swin", "swinv2") else 8
    grid = (IMAGE_SIZE // patch, IMAGE_SIZE // patch)
    if maps.shape != (batch.shape[0], *grid) or not torch.isfinite(maps).all():
        return Cell(family, name, "failed", f"maps of shape {list(maps.shape)}, finite: {bool(maps.isfinite().all())}")
    constant = ~maps.flatten(1).std(dim=1).gt(0)
    if name in ZERO_BY_RELU:
        constant &= maps.flatten(1).abs().amax(dim=1).gt(0)
    if constant.any():
        return Cell(family, name, "failed", "a constant map")
    scale = max(1.0, float(single.abs().max()))
    if not torch.allclose(maps, single, rtol=0, atol=1e-5 * scale):
        return Cell(family, name, "failed", "batch differs from one by one")
    return Cell(family, name, "maps")


def coverage_cells(families: list[str] | None = None) -> list[Cell]:
    """Every registered explainer on every family's tiny model (``FAMILIES``), in table order."""
    cells = []
    batch = images()
    for family in families or list(FAMILIES):
        model = build(family)
        cells += [run_cell(family, model, name, batch) for name in X.available()]
    return cells


def table(cells: list[Cell]) -> str:
    families = list(dict.fromkeys(cell.family for cell in cells))
    names = list(dict.fromkeys(cell.explainer for cell in cells))
    text = {(cell.family, cell.explainer): cell.text for cell in cells}
    lines = ["| explainer | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    lines += [f"| `{name}` | " + " | ".join(text[(f, name)] for f in families) + " |" for name in names]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="*", help=f"families (default: all of {list(FAMILIES)})")
    args = parser.parse_args()
    unknown = [family for family in args.families if family not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; expected some of {list(FAMILIES)}")
    print(table(coverage_cells(args.families or None)))
    for family, (name, _, _) in FAMILIES.items():
        if not args.families or family in args.families:
            print(f"- {family}: `{name}` (tiny, random init)")


if __name__ == "__main__":
    main()
