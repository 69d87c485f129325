"""Explainer cost in units of the model's own forward, printed as a table (a benchmark, not a timed test).

    python benchmarks/explainers.py                       # vit_small_patch16_224, batch 16, 224 and 448 px, CPU
    python benchmarks/explainers.py --device cuda --sizes 224
    python benchmarks/explainers.py --model swin_tiny_patch4_window7_224 --sizes 224
    python benchmarks/explainers.py --rows tokentm "all but tokentm" "all (one capture)"   # what tokentm adds
    python benchmarks/explainers.py --model vit_tiny_patch16_224 --batch 8 --sizes 224 --repeats 2 \
        --rows layernorm_stats
    python benchmarks/explainers.py --model swin_tiny_patch4_window7_224 --sizes 224 --repeats 2 \
        --rows attnlrp "attnlrp (cp)"                    # issue 9's setting: target <= 2.0x forward+backward
    python benchmarks/explainers.py --sizes 224 --rows lrp "lrp (pixels)" transformer_attribution \
        "transformer_attribution (pixels)"               # what the pixel maps cost over the patch maps

Each row runs in a fresh subprocess so its peak memory is its own: peak RSS above the process's RSS after a
warm-up no-grad forward on CPU, ``torch.cuda.max_memory_allocated`` above the model and batch on CUDA.
Times are medians over ``--repeats`` runs after one warm-up. Quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import timm
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect

ALL = "all (one capture)"
READOUTS = [name for name in X.available() if X.get_info(name).readout]  # what one capture pass serves
# the shared pass without tokentm, the only readout that records token states: what adding it costs the pass
ALL_BUT_TOKENTM = "all but tokentm"
WITHOUT_LN = "all but layernorm_stats"  # the shared pass before layernorm_stats joined (its own capture needs)
ATTNLRP_CP = "attnlrp (cp)"  # attnlrp with attention_rule="cp": the probabilities detached, no softmax backward
PIXELS = " (pixels)"  # a row for an explainer's pixel_relevance (partial_lrp's is lrp's pass, not measured twice)
PIXEL_MAPS = ["transformer_attribution", "lrp", "attnlrp"]


def build(model_name: str, size: int, batch: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=size).to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    return model, images


def accepted(names: list[str], model: torch.nn.Module) -> list[str]:
    """The ``names`` that ``create`` accepts for ``model`` (SwinV2 refuses tokentm, layernorm_stats, the LRP family)."""
    kept = []
    for name in names:
        try:
            X.create(name, model)
        except (TypeError, ValueError):
            continue
        kept.append(name)
    return kept


def runner(row: str, model: torch.nn.Module):  # type: ignore[no-untyped-def]
    if row == "forward":
        return lambda x: model(x)
    if row == "forward+backward":

        def forward_backward(x: torch.Tensor) -> None:
            with torch.enable_grad():
                model(x).max(dim=1).values.sum().backward()
            model.zero_grad(set_to_none=True)

        return forward_backward
    if row == ALL:
        return X.create_many(accepted(READOUTS, model), model)
    if row == ALL_BUT_TOKENTM:
        return X.create_many([name for name in READOUTS if name != "tokentm"], model)
    if row == WITHOUT_LN:
        return X.create_many([name for name in READOUTS if name != "layernorm_stats"], model)
    if row == ATTNLRP_CP:
        return X.create("attnlrp", model, attention_rule="cp")
    if row.endswith(PIXELS):
        return X.create(row.removesuffix(PIXELS), model).pixel_relevance
    return X.create(row, model)


def measure(row: str, model_name: str, size: int, batch: int, device: str, repeats: int) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, images = build(model_name, size, batch, device)
    run = runner(row, model)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(images)  # warm-up; everything below is measured relative to this
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        run(images)
    sync()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():  # as a user would call it; explainers leave no_grad themselves
            run(images)
        sync()
        times.append(time.perf_counter() - start)
    return {"row": row, "seconds": statistics.median(times), "peak_mib": max(peak, 0) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", nargs="+", help="only these explainer rows (forward rows always run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.model, args.size, args.batch, args.device, args.repeats)))
        return

    model = timm.create_model(args.model, pretrained=False)
    family = detect(model).family
    explainers = accepted([name for name in X.available() if family in X.get_info(name).families], model)
    variants = [ATTNLRP_CP] if "attnlrp" in explainers else []
    variants += [name + PIXELS for name in PIXEL_MAPS if name in explainers]
    variants += [ALL_BUT_TOKENTM] if "tokentm" in explainers else []
    variants += [WITHOUT_LN] if "layernorm_stats" in explainers else []
    rows = ["forward", "forward+backward", *explainers, *variants, ALL]
    if args.rows:
        unknown = sorted(set(args.rows) - set(rows))
        if unknown:
            parser.error(f"unknown rows {unknown}; expected some of {rows[2:]}")
        rows = [row for row in rows if row in args.rows or row in ("forward", "forward+backward")]
    for size in args.sizes:
        results = {}
        for row in rows:
            command = [
                sys.executable,
                __file__,
                "--worker",
                row,
                "--size",
                str(size),
                "--model",
                args.model,
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[row] = json.loads(output.strip().splitlines()[-1])
        forward = results["forward"]["seconds"]
        backward = results["forward+backward"]["seconds"]
        layout = detect(timm.create_model(args.model, pretrained=False, img_size=size)).layout(
            torch.zeros(1, 3, size, size)
        )
        grid = "x".join(map(str, layout.grid_size))
        print(
            f"\n{args.model}, batch {args.batch}, {size}px (maps {grid}), {args.device}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(f"| {'method':20s} | {'x forward':>9s} | {'x fwd+bwd':>9s} | {'peak MiB':>8s} |")
        print(f"|{'-' * 22}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
        for row in rows:
            r = results[row]
            print(
                f"| {row:20s} | {r['seconds'] / forward:9.2f} | {r['seconds'] / backward:9.2f} | {r['peak_mib']:8.0f} |"
            )
        count = len(READOUTS)
        if ALL in results and all(name in results for name in READOUTS):
            slowest = max(results[name]["seconds"] for name in READOUTS)
            print(
                f"all {count} readouts from one capture / slowest alone: {results[ALL]['seconds'] / slowest:.2f}  "
                "(target <= 1.2)"
            )
            print(
                f"sum of the {count} readouts run one by one / all from one capture: "
                f"{sum(results[n]['seconds'] for n in READOUTS) / results[ALL]['seconds']:.2f}"
            )
        if ALL in results and ALL_BUT_TOKENTM in results:
            full, without = results[ALL], results[ALL_BUT_TOKENTM]
            print(
                f"all from one capture / all but tokentm: {full['seconds'] / without['seconds']:.2f}  "
                f"(target <= 1.2); tokentm's extra peak memory in the pass: "
                f"{full['peak_mib'] - without['peak_mib']:.0f} MiB"
            )
        for row in ("attnlrp", ATTNLRP_CP):
            if row in results:
                memory = results[row]["peak_mib"] / max(results["forward+backward"]["peak_mib"], 1)
                print(
                    f"{row} / forward+backward: {results[row]['seconds'] / backward:.2f} (target <= 2.0); "
                    f"peak memory {memory:.2f}x forward+backward's"
                )
        if "layernorm_stats" in results and ALL in results and WITHOUT_LN in results:
            print(
                f"layernorm_stats / forward+backward: {results['layernorm_stats']['seconds'] / backward:.2f} "
                f"(target <= 1.5); one capture with it / without it: "
                f"{results[ALL]['seconds'] / results[WITHOUT_LN]['seconds']:.2f} (target <= 1.1)"
            )


if __name__ == "__main__":
    main()
