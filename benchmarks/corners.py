"""The corner artifact on the trained tiny Swin and ViT (the test fixtures' recipe): every explainer's corner share.

    python benchmarks/corners.py --seed 0 --cache /tmp/lvx-corners   # trains both models (a few minutes on CPU)

Per explainer and model: the share of positive relevance in the image corners (``analysis.corner_region``: four
squares of ``--fraction`` of each side), against a uniform map's share and the share the object mask itself puts
there; the share on the object (relevance mass on the pooled mask), the pointing game and insertion (mean
baseline). Then the attention rows themselves: per Swin block, the peakedness ``sum_j a_j^2`` of the queries in the
corners and in the wrapped strips of a shifted block (the last ``shift`` rows/columns, whose windows the shift
mask splits) against the rest, to test docs/methods.md §7's hypothesis.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.adapters import CaptureNeeds, capture_pass, detect
from lightning_vitx.analysis import attention_sharpness, corner_region, corner_share, object_share
from lightning_vitx.analysis.corners import object_fraction
from lightning_vitx.data import (
    SHAPES_IMAGE_SIZES,
    ShapesDataset,
    tiny_swin_for_shapes,
    tiny_vit_for_shapes,
    trained_on_shapes,
)

RULES = ["inverse_std", "std", "outlier"]  # layernorm_stats candidates besides the default ("final")


def trained(kind: str, seed: int, cache: Path | None):  # type: ignore[no-untyped-def]
    size = SHAPES_IMAGE_SIZES[kind]
    path = cache / f"{kind}-{seed}.pt" if cache else None
    if path is not None and path.exists():
        model = (tiny_swin_for_shapes if kind == "swin" else tiny_vit_for_shapes)(size, seed=seed)
        model.load_state_dict(torch.load(path))
        model.eval()
    else:
        start = time.perf_counter()
        run = trained_on_shapes(kind, seed)  # type: ignore[arg-type]
        model = run.model
        print(f"{kind}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}, {time.perf_counter() - start:.0f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    data = ShapesDataset(96, size, seed=20_000 + seed)
    images, labels, masks = (torch.stack([torch.as_tensor(data[i][k]) for i in range(len(data))]) for k in range(3))
    return model, images, labels, masks


def score(name: str, model, images, maps, labels, masks, **options) -> float:  # type: ignore[no-untyped-def]
    metric = M.create(name, **options)
    metric.update(model, images, maps, labels, masks)
    return float(metric.compute()["score"])


def table(kind: str, model, images, labels, masks, fraction: float) -> None:  # type: ignore[no-untyped-def]
    specs: dict[str, dict] = {name: {} for name in X.available()}
    specs.update({f"layernorm_stats[{rule}]": {"rule": rule} for rule in RULES})
    explainers = {n: X.create(n.split("[")[0], model, **o) for n, o in specs.items() if _supported(n, model)}
    maps = X.ExplainerGroup(explainers)(images, labels)
    grid = tuple(maps["rollout"].shape[-2:])
    region = corner_region(grid, fraction)
    pooled = object_fraction(masks, grid)
    print(f"\n{kind}: grid {grid}, corner region {int(region.sum())} of {region.numel()} cells")
    print(
        f"  uniform map: corner share {region.float().mean():.3f}; object mask: corner share "
        f"{corner_share(pooled, fraction).nanmean():.3f}"
    )
    print(f"  {'explainer':30s} {'corners':>8s} {'object':>8s} {'pointing':>8s} {'rel.mass':>8s} {'insert':>8s}")
    for name, m in maps.items():
        print(
            f"  {name:30s} {corner_share(m, fraction).nanmean():8.3f} {object_share(m, masks).nanmean():8.3f} "
            f"{score('pointing_game', model, images, m, labels, masks):8.3f} "
            f"{score('relevance_mass', model, images, m, labels, masks):8.3f} "
            f"{score('insertion', model, images, m, labels, masks, baseline='mean'):8.3f}"
        )


def _supported(name: str, model) -> bool:  # type: ignore[no-untyped-def]
    try:
        X.create(name.split("[")[0], model)
    except TypeError:
        return False
    return True


def sharpness(model, images) -> None:  # type: ignore[no-untyped-def]
    record = capture_pass(detect(model), images, needs=CaptureNeeds())
    print("\nSwin attention peakedness sum_j a_j^2 (1 = one key), mean over queries and images:")
    print(f"  {'block':>5s} {'grid':>8s} {'shift':>6s} {'corners':>8s} {'wrapped':>8s} {'rest':>8s}")
    for index, (values, geometry) in enumerate(zip(attention_sharpness(record), record.geometries, strict=True)):
        grid = geometry.grid_size
        values = values.reshape(-1, *grid)
        corners = corner_region(grid, 0.2)
        wrapped = torch.zeros(grid, dtype=torch.bool)
        sh = geometry.shift_size
        if any(sh):
            # after the roll by -shift, the last `shift` rows/cols hold the wrapped tokens: originally the first ones
            wrapped[: sh[0], :] = True
            wrapped[:, : sh[1]] = True
        rest = ~(corners | wrapped)
        cells = [values[:, c].mean() if c.any() else torch.tensor(float("nan")) for c in (corners, wrapped, rest)]
        print(f"  {index:5d} {str(grid):>8s} {str(sh):>6s} " + " ".join(f"{float(c):8.3f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.2, help="corner square side, as a share of the side")
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the trained weights in")
    parser.add_argument("--models", nargs="+", default=["swin", "vit"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for kind in args.models:
        model, images, labels, masks = trained(kind, args.seed, args.cache)
        table(kind, model, images, labels, masks, args.fraction)
        if kind == "swin":
            sharpness(model, images)


if __name__ == "__main__":
    main()
