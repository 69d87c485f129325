"""Patch-interaction analysis: its cost as the token count grows, and how well each indicator tracks the model.

    python benchmarks/interactions.py speed                    # vit_tiny / vit_small, 224 and 448 px, batch 4, CPU
    python benchmarks/interactions.py speed --device cuda --batch 16
    python benchmarks/interactions.py agreement --seeds 0 1    # trains the shapes fixture (tests/conftest.py) per seed

``speed``: seconds per batch of ``patch_interactions`` (gradient indicator: one forward + one backward, then the
``[B, P, P]`` matrices and receptive fields of every block) next to the model's forward+backward, and the bytes of
the returned matrices. ``agreement``: on the trained shapes model, Spearman's rank correlation between each
indicator's pair score (interaction summed over blocks) and the exact effect of removing that edge in every block
(``edge_ablation_effects``), per image over random pairs and over the indicators' strongest pairs; and the mean
ERF size per block.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn

from lightning_vitx.analysis import edge_ablation_effects, patch_interactions, rank_correlation, sample_pairs


def seconds(run, repeats: int, sync) -> float:  # type: ignore[no-untyped-def]
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(models: list[str], sizes: list[int], batch: int, device: str, repeats: int) -> None:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    print("| model | px | tokens N | fwd+bwd s | analysis s | ratio | matrices MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in models:
        for size in sizes:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, img_size=size).to(device).eval()
            images = torch.randn(batch, 3, size, size, device=device)

            def forward_backward(model: nn.Module = model, images: torch.Tensor = images) -> None:
                model(images).max(dim=1).values.sum().backward()
                model.zero_grad(set_to_none=True)

            def analyse(model: nn.Module = model, images: torch.Tensor = images) -> None:
                patch_interactions(model, images)

            base = seconds(forward_backward, repeats, sync)
            analysis = seconds(analyse, repeats, sync)
            result = patch_interactions(model, images)
            mib = (
                sum(
                    m.numel() * m.element_size() + e.numel()
                    for m, e in zip(result.interactions, result.erf, strict=True)
                )
                / 2**20
            )
            tokens = result.interactions[0].shape[-1]
            print(f"| {name} | {size} | {tokens} | {base:.3f} | {analysis:.3f} | {analysis / base:.2f} | {mib:.0f} |")


def agreement(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pairs: int = 200, top: int = 50) -> dict:
    """Per indicator: mean per-image Spearman with the exact edge-removal effects (random and top pairs)."""
    results = {name: patch_interactions(model, images, labels, indicator=name) for name in ("attention", "gradient")}
    grid = results["gradient"].grid_sizes[0]
    random_pairs = sample_pairs(grid, pairs, seed=0)
    exact = edge_ablation_effects(model, images, random_pairs, labels, batch_size=512)
    out: dict = {"effect |mean|": float(exact.abs().mean())}
    for name, result in results.items():
        out[f"{name} random"] = float(rank_correlation(result.pair_scores(random_pairs), exact).mean())
    # the strongest pairs of either indicator, per image (pairs differ by image: one ablation per image)
    strong = []
    for index in range(images.shape[0]):
        chosen = []
        for result in results.values():
            total = torch.stack([m[index] for m in result.interactions]).sum(0)
            total.fill_diagonal_(float("-inf"))
            flat = total.flatten().topk(top).indices
            chosen.append(torch.stack([flat // total.shape[1], flat % total.shape[1]], 1))
        pairs_i = torch.cat(chosen).unique(dim=0)
        effect = edge_ablation_effects(model, images[index : index + 1], pairs_i, labels[index : index + 1], 512)
        strong.append(
            {n: float(rank_correlation(r.pair_scores(pairs_i)[index], effect[0])) for n, r in results.items()}
        )
    for name in results:
        out[f"{name} top"] = statistics.mean(row[name] for row in strong)
    for name, result in results.items():
        out[f"{name} erf size"] = [round(float(v), 2) for v in result.mean_erf_size().mean(0)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "agreement"])
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.models, args.sizes, args.batch, args.device, args.repeats)
        return
    from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes, train_on_shapes

    for seed in args.seeds:  # the fixture of tests/conftest.py
        run = train_on_shapes(
            tiny_vit_for_shapes(64, seed=seed),
            ShapesDataset(64 * 1500, 64, seed=seed),
            max_steps=1500,
            held_out=ShapesDataset(256, 64, seed=10_000 + seed),
            target_accuracy=0.85,
        )
        held = ShapesDataset(args.images, 64, seed=20_000 + seed)
        images = torch.stack([torch.as_tensor(held[i][0]) for i in range(len(held))])
        labels = torch.as_tensor([int(held[i][1]) for i in range(len(held))])
        print(f"seed {seed}:", agreement(run.model, images, labels))


if __name__ == "__main__":
    main()
