"""Metric cost relative to the model evaluations it needs, printed as a table (a benchmark, not a timed test).

    python benchmarks/metrics.py                  # vit_small_patch16_224, batch 16, CPU

For a perturbation metric the floor is (number of curve points) x (one forward of the batch): the column
``x floor`` says how close to it we are (target <= 1.2). Localisation metrics run no model; their time is shown
in units of one forward. Quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import lightning_vitx.metrics as M


def timed(function, repeats: int) -> float:  # type: ignore[no-untyped-def]
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(args.device).eval()
    size = model.patch_embed.img_size
    grid = model.patch_embed.grid_size
    images = torch.randn(args.batch, 3, *size, device=args.device)
    maps = torch.rand(args.batch, *grid, device=args.device)
    masks = torch.rand(args.batch, *size, device=args.device) > 0.7
    target = torch.randint(model.num_classes, (args.batch,), device=args.device)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    one_forward = timed(forward, args.repeats)
    print(
        f"\n{args.model}, batch {args.batch}, {size[0]}px, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; one forward of the batch = 1.00"
    )
    print(f"| {'metric':22s} | {'model evals':>11s} | {'x forward':>9s} | {'x floor':>7s} |")
    print(f"|{'-' * 24}|{'-' * 13}|{'-' * 11}|{'-' * 9}|")
    for name in M.available():
        metric = M.create(name)

        def run(metric=metric) -> None:  # type: ignore[no-untyped-def]
            metric.reset()
            metric.update(model, images, maps, target, masks)
            metric.compute()

        seconds = timed(run, args.repeats)
        evaluations = int(metric.fractions.numel()) if hasattr(metric, "fractions") else 0
        floor = f"{seconds / (evaluations * one_forward):7.2f}" if evaluations else f"{'-':>7s}"
        print(f"| {name:22s} | {evaluations:11d} | {seconds / one_forward:9.2f} | {floor} |")


if __name__ == "__main__":
    main()
