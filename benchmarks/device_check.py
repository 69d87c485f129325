"""The GPU check: one script, one table, for the first session that is lent a device (under 8 minutes on one GPU).

    python benchmarks/device_check.py                        # CUDA: ViT-B/16 and Swin-T at 224 px, batch 64
    python benchmarks/device_check.py --device cpu --tiny    # the same checks on the CPU, tiny models (the suite)
    python benchmarks/device_check.py --only parity syncs    # some of the checks

What it prints, one row per measurement (``check | model | row | result``):

- ``parity``: every explainer's maps on the device against the CPU's on the same weights, images and target, in
  float32 and under bf16 / fp16 autocast (explainers turn autocast off: all three should agree). ``rel`` is
  ``max |device - cpu| / max |cpu|`` over the batch, ``r`` the smallest per-image Pearson correlation. Where they
  differ by more than 1e-3, both are compared with a float64 run on the CPU: equally far from it, the difference is
  float32 rounding that the method amplifies, not a device fault.
- ``speed``: each explainer at ``--batch`` images in ratios to the model's forward and forward+backward (medians
  over ``--repeats`` after a warm-up), and its peak device memory above the model and batch.
- ``batching``: ``transformer_attribution`` and ``lrp`` on a batch against the same images one at a time (how the
  reference code runs): images per second, batched / one by one.
- ``syncs``: host synchronisations in one explainer call and where they are (``torch.cuda.set_sync_debug_mode``);
  on the CPU, the host reads made from Python, which would sync on a GPU.
- ``fit``: one epoch of the shapes demo's model with the monitor (every explainer, four metrics) on the device: the
  fit's seconds, the monitor's share, peak memory, whether every score is finite.

Random weights throughout (nothing is downloaded). Quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect
from lightning_vitx.data import tiny_swin_for_shapes, tiny_vit_for_shapes

CHECKS = ("parity", "speed", "batching", "syncs", "fit")
BATCHED = ("transformer_attribution", "lrp")  # the methods whose reference runs one image at a time
ROOT = Path(__file__).resolve().parent.parent
AMPLIFIED = 1e-3  # device vs CPU relative difference above which both are compared with float64


@dataclass(frozen=True)
class Setting:
    """Sizes of one run: the full check on a GPU, or the tiny one the suite runs on the CPU."""

    models: dict[str, Callable[[], nn.Module]]
    image_size: dict[str, int]
    parity_batch: int
    batch: int
    repeats: int
    one_by_one: int  # images explained one at a time in the batching check
    train_size: int
    val_size: int
    samples: int


FULL = Setting(
    models={
        "vit_base_patch16_224": lambda: timm.create_model("vit_base_patch16_224", pretrained=False),
        "swin_tiny_patch4_window7_224": lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False),
    },
    image_size={"vit_base_patch16_224": 224, "swin_tiny_patch4_window7_224": 224},
    parity_batch=4,
    batch=64,
    repeats=3,
    one_by_one=64,
    train_size=8192,
    val_size=256,
    samples=32,
)
TINY = Setting(
    models={"tiny_vit": lambda: tiny_vit_for_shapes(64), "tiny_swin": lambda: tiny_swin_for_shapes(56)},
    image_size={"tiny_vit": 64, "tiny_swin": 56},
    parity_batch=2,
    batch=2,
    repeats=1,
    one_by_one=2,
    train_size=32,
    val_size=16,
    samples=4,
)


class Table:
    """Rows of ``check | model | row | result``, printed as they come (a long run shows progress)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        print(f"| {'check':8s} | {'model':28s} | {'row':32s} | result")
        print(f"|{'-' * 10}|{'-' * 30}|{'-' * 34}|{'-' * 60}")

    def add(self, check: str, model: str, row: str, result: str) -> None:
        self.rows.append((check, model, row, result))
        print(f"| {check:8s} | {model:28s} | {row:32s} | {result}", flush=True)


def explainers_for(model: nn.Module) -> list[str]:
    family = detect(model).family
    return [name for name in X.available() if family in X.get_info(name).families]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(found: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """``max |found - expected| / max |expected|`` and the smallest per-image Pearson correlation."""
    found, expected = found.double().cpu().flatten(1), expected.double().cpu().flatten(1)
    scale = expected.abs().max().item()
    difference = (found - expected).abs().max().item()
    relative = difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))
    a, b = found - found.mean(1, keepdim=True), expected - expected.mean(1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    flat = norms == 0  # a constant map (Grad-CAM's all-zero ones): equal maps correlate 1
    pearson = torch.where(flat, (a - b).abs().amax(1).eq(0).double(), (a * b).sum(1) / norms.clamp_min(1e-300))
    return relative, pearson.min().item()


def check_parity(table: Table, name: str, model: nn.Module, size: int, setting: Setting, device: torch.device) -> None:
    torch.manual_seed(1)
    images = torch.randn(setting.parity_batch, 3, size, size)
    with torch.no_grad():
        target = model(images).argmax(1)  # fixed on the CPU, so a flipped argmax cannot make a difference
    moved = copy.deepcopy(model).to(device)
    exact = copy.deepcopy(model).double()
    for explainer in explainers_for(model):
        expected = X.create(explainer, model)(images, target=target)
        found = X.create(explainer, moved)(images.to(device), target=target.to(device))
        results = []
        if agreement(found, expected)[0] > AMPLIFIED:  # rounding the method amplifies, or a fault? float64 tells
            truth = X.create(explainer, exact)(images.double(), target=target)
            for label, maps in (("cpu", expected), (device.type, found)):
                relative, pearson = agreement(maps, truth)
                results.append(f"{label} vs float64 rel {relative:.1e} r {pearson:.4f}")
        for dtype in (None, torch.bfloat16, torch.float16):
            autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
            with autocast:
                found = X.create(explainer, moved)(images.to(device), target=target.to(device))
            relative, pearson = agreement(found, expected)
            label = "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] + " autocast"
            results.append(f"{label} rel {relative:.1e} r {pearson:.4f}")
        table.add("parity", name, explainer, "; ".join(results))


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds over ``repeats`` calls after one warm-up, and peak device memory (MiB) above the start."""
    run()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def check_speed(table: Table, name: str, model: nn.Module, size: int, setting: Setting, device: torch.device) -> None:
    model = copy.deepcopy(model).to(device)
    images = torch.randn(setting.batch, 3, size, size, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def forward_backward() -> None:
        with torch.enable_grad():
            model(images).max(dim=1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    base, _ = timed(forward, device, setting.repeats)
    both, both_peak = timed(forward_backward, device, setting.repeats)
    table.add(
        "speed",
        name,
        f"forward+backward (batch {setting.batch})",
        f"x{both / base:.2f} forward; peak {both_peak:.0f} MiB",
    )
    names = explainers_for(model)
    rows = {explainer: X.create(explainer, model) for explainer in names}
    rows["all readouts (one capture)"] = X.create_many([n for n in names if X.get_info(n).readout], model)
    for row, explainer in rows.items():
        seconds, peak = timed(lambda e=explainer: e(images), device, setting.repeats)
        table.add(
            "speed", name, row, f"x{seconds / base:.2f} forward, x{seconds / both:.2f} fwd+bwd; peak {peak:.0f} MiB"
        )


def check_batching(
    table: Table, name: str, model: nn.Module, size: int, setting: Setting, device: torch.device
) -> None:
    model = copy.deepcopy(model).to(device)
    images = torch.randn(setting.one_by_one, 3, size, size, device=device)
    for explainer_name in BATCHED:
        if explainer_name not in explainers_for(model):
            continue
        explainer = X.create(explainer_name, model)
        batched, _ = timed(lambda e=explainer: e(images), device, setting.repeats)
        single, _ = timed(lambda e=explainer: [e(image[None]) for image in images], device, 1)
        table.add(
            "batching",
            name,
            explainer_name,
            f"{len(images) / batched:.1f} img/s batched vs {len(images) / single:.1f} one by one: "
            f"x{single / batched:.1f}",
        )


# Tensor methods that read a value back to the host: a sync on a GPU (what the CPU run counts instead)
HOST_READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """Where the block reads tensor values back to the host, from Python (``places``: ``file:line`` each time)."""

    def __init__(self) -> None:
        super().__init__()
        self.places: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in HOST_READS:
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.places.append(f"{Path(caller.filename).name}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


@contextmanager
def counting_syncs(device: torch.device) -> Iterator[list[str]]:
    """``file:line`` of each host sync in the block: CUDA's sync debug mode (each sync warns), or on the CPU the
    host reads made from Python (what would sync on a GPU; reads inside C++ kernels are not seen)."""
    places: list[str] = []
    if device.type != "cuda":
        with HostReads() as reads:
            yield places
        places.extend(reads.places)
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield places
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    places.extend(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)


def check_syncs(table: Table, name: str, model: nn.Module, size: int, setting: Setting, device: torch.device) -> None:
    model = copy.deepcopy(model).to(device)
    images = torch.randn(setting.parity_batch, 3, size, size, device=device)
    target = torch.zeros(len(images), dtype=torch.long, device=device)
    kind = "host syncs" if device.type == "cuda" else "host reads from Python"
    for explainer_name in explainers_for(model):
        explainer = X.create(explainer_name, model)
        explainer(images, target=target)  # warm-up: lazy initialisation is not the method's cost
        synchronize(device)
        with counting_syncs(device) as places:
            explainer(images, target=target)
        where = ", ".join(f"{place} x{places.count(place)}" for place in sorted(set(places)))
        table.add("syncs", name, explainer_name, f"{len(places)} {kind} (explicit target)" + f": {where}" * bool(where))


def check_fit(table: Table, setting: Setting, device: torch.device) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_vitx.callbacks import ExplainabilityMonitor

    spec = importlib.util.spec_from_file_location("shapes_demo", ROOT / "examples" / "shapes.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    L.seed_everything(0, verbose=False)
    module = demo.ShapesClassifier(64, train_size=setting.train_size, val_size=setting.val_size)
    explainers = explainers_for(module.vit)
    monitor = ExplainabilityMonitor(
        explainers=explainers,
        metrics=["deletion", "insertion", "pointing_game", "relevance_mass"],
        num_samples=setting.samples,
        panel_size=4,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            logger=CSVLogger(root),
            callbacks=[monitor],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        start = time.perf_counter()
        trainer.fit(module)
        seconds = time.perf_counter() - start
    scores = {k: v for k, v in monitor.history[-1].items() if k.count("/") >= 2}
    finite = sum(v == v for v in scores.values())  # NaN != NaN
    explain = monitor.history[-1].get("explain/time_s", float("nan"))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    table.add(
        "fit",
        "shapes tiny ViT (64 px)",
        f"1 epoch, {len(explainers)} explainers",
        f"{seconds:.1f} s, monitor {explain:.1f} s; peak {peak:.0f} MiB; {finite}/{len(scores)} scores finite",
    )


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (the suite's CPU run)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (and --tiny for a quick run)")
    setting = TINY if args.tiny else FULL
    hardware = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device check: {hardware}; torch {torch.__version__}, timm {timm.__version__}; "
        f"{'tiny' if args.tiny else 'full'}"
    )
    table = Table()
    checks = {"parity": check_parity, "speed": check_speed, "batching": check_batching, "syncs": check_syncs}
    for name, build in setting.models.items():
        torch.manual_seed(0)
        model = build().eval()
        for check in args.only:
            if check in checks:
                checks[check](table, name, model, setting.image_size[name], setting, device)
    if "fit" in args.only:
        check_fit(table, setting, device)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
