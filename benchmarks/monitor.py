"""What the monitor costs a training run, as a table a user can plan with.

    python benchmarks/monitor.py                   # the demo's tiny ViT, 256 validation images, CPU
    python benchmarks/monitor.py --val-size 50000  # planned against a 50,000-image validation epoch

For the monitor's defaults (three explainers, deletion / insertion / pointing game, 16 samples) and for every
explainer with the same metrics, it validates the demo's model on the synthetic shapes without and with the
monitor and prints:

- the monitor's added seconds per explained epoch as a share of a validation epoch of ``--val-size`` images on the
  same model (``--val-size`` times the median batched forward per image: a long epoch's cost, without the fixed
  overhead that dominates a 256-image validation);
- the images the model saw per held-out sample (counted by a forward hook) against the floor for the same work:
  one clean forward per sample and one per baseline a curve ends at, each perturbation metric's interior curve
  points (fractions strictly between 0 and 1) once per explainer and for the random-order reference (unless
  ``reference_curves=False``), each explainer's own pass (the readouts share one capture),
  and, with ``sanity``, the runner-up class's pass over the panel's samples (maps the metrics skip as degenerate,
  such as Grad-CAM's all-zero ones, take no curve: the count can fall below the floor);
- the monitor's own pass (``<name>/time_s``: explaining and scoring) with the sanity scores against without them;
- the drawing per pass (the pictures and the logging, ``log_pass``, PNGs here as no logger is attached) as a
  share of the whole pass (the monitor's ``on_validation_epoch_end``).

Quote the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence

import lightning as L
import torch

import lightning_vitx.callbacks.monitor as monitor_module
import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ShapesDataModule

MODEL_KWARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
VALIDATION_IMAGES = 256
DEFAULTS = ExplainabilityMonitor()  # its explainers, metrics, num_samples and panel_size are the defaults'


@contextlib.contextmanager
def timed_passes() -> Iterator[dict[str, list[float]]]:
    """Seconds of each monitor pass (``on_validation_epoch_end``) and of its drawing (``log_pass``), while open."""
    seconds: dict[str, list[float]] = {"pass": [], "drawing": []}
    log_pass, epoch_end = monitor_module.log_pass, ExplainabilityMonitor.on_validation_epoch_end

    def timed(key: str, function):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[key].append(time.perf_counter() - start)

        return call

    monitor_module.log_pass = timed("drawing", log_pass)
    ExplainabilityMonitor.on_validation_epoch_end = timed("pass", epoch_end)  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        monitor_module.log_pass = log_pass
        ExplainabilityMonitor.on_validation_epoch_end = epoch_end  # type: ignore[method-assign]


def validate(module: L.LightningModule, data: L.LightningDataModule, callbacks: list) -> tuple[float, int, float]:
    """Seconds for one validation run, the images the model saw in it, and the monitor's ``time_s`` (0 without)."""
    seen = []
    handle = module.model.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].shape[0]))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=tempfile.gettempdir(),  # the monitor's PNGs (no logger) land there, not in the checkout
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    try:
        trainer.validate(module, datamodule=data, verbose=False)
    finally:
        handle.remove()
    return time.perf_counter() - start, sum(seen), float(trainer.callback_metrics.get("explain/time_s", 0.0))


def floor_per_sample(
    explainers: Sequence[str], metrics: Sequence[str], sanity: bool, panel_share: float, reference: bool = True
) -> float:
    """The fewest images per held-out sample for the same scores (module docstring)."""
    interior, baselines = 0, set()
    for name in metrics:
        metric = M.create(name)
        fractions = getattr(metric, "fractions", None)
        if fractions is not None:
            interior += int(((fractions > 0) & (fractions < 1)).sum())  # the clean and fully perturbed ends are shared
            if bool((fractions == (0 if metric.insert else 1)).any()):
                baselines.add(metric.baseline)  # a curve ends at the baseline image: one forward per baseline
    curves = (len(explainers) + int(reference)) * interior  # every explainer's curves and the random-order one
    readouts = [name for name in explainers if X.get_info(name).readout]
    passes = (1 if readouts else 0) + len(explainers) - len(readouts)
    sensitive = [name for name in explainers if X.get_info(name).class_sensitive]
    sensitive_passes = (1 if any(X.get_info(n).readout for n in sensitive) else 0) + sum(
        not X.get_info(n).readout for n in sensitive
    )
    runner_up = sensitive_passes * panel_share if sanity else 0.0
    return 1 + len(baselines) + curves + passes + runner_up


def forward_seconds_per_image(model: torch.nn.Module, batch: int = 64, repeats: int = 20) -> float:
    """A validation epoch's cost per image: the median batched forward (what dominates a long epoch), per image."""
    images = torch.randn(batch, 3, MODEL_KWARGS["img_size"], MODEL_KWARGS["img_size"])
    times = []
    with torch.no_grad():
        model.eval()(images)
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val-size", type=int, default=10_000, help="validation epoch to plan against (images)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    module = TimmClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs=MODEL_KWARGS)
    data = ShapesDataModule(image_size=64, val_size=VALIDATION_IMAGES, batch_size=64, distractors=2)  # as the demo
    validate(module, data, [])  # warm-up
    plain = statistics.median(validate(module, data, [])[0] for _ in range(args.repeats))
    per_image = forward_seconds_per_image(module.model)
    configurations = {
        "defaults": {},
        "defaults, no reference curves": {"reference_curves": False},
        "every explainer": {"explainers": X.available()},
    }
    print(
        f"\nthe demo's tiny ViT (64 px), {VALIDATION_IMAGES} validation images in batches of 64; CPU, "
        f"{torch.get_num_threads()} threads; planned against a {args.val_size:,}-image validation epoch"
    )
    print("| monitor | explainers | added time / validation epoch | images per sample | floor | x floor |")
    print("|---|---|---|---|---|---|")
    passes, drawing = {}, {}
    for label, options in configurations.items():
        runs = []
        with timed_passes() as seconds:
            for _ in range(args.repeats):
                runs.append(validate(module, data, [ExplainabilityMonitor(**options)]))
        passes[label] = statistics.median(time_s for _, _, time_s in runs)
        shares = [draw / whole for draw, whole in zip(seconds["drawing"], seconds["pass"], strict=True)]
        drawing[label] = statistics.median(shares)
        monitor = ExplainabilityMonitor(**options)
        added = statistics.median(seconds for seconds, _, _ in runs) - plain
        images = (runs[-1][1] - VALIDATION_IMAGES) / monitor.num_samples
        panel_share = min(monitor.panel_size, monitor.num_samples) / monitor.num_samples
        names, metrics, reference = monitor.explainer_names, monitor.metric_names, monitor.reference_curves
        floor = floor_per_sample(names, metrics, monitor.sanity, panel_share, reference)
        share = added / (args.val_size * per_image)
        print(
            f"| {label} | {len(monitor.explainer_names)} | {share:.3f} | {images:.0f} | {floor:.0f} | "
            f"{images / floor:.2f} |"
        )
    without = statistics.median(
        validate(module, data, [ExplainabilityMonitor(sanity=False)])[2] for _ in range(args.repeats)
    )
    print(
        f"the monitor's pass (explain and score) with the sanity scores / without, defaults: "
        f"{passes['defaults'] / without:.2f} (target <= 1.10)"
    )
    shares = ", ".join(f"{label} {share:.2f}" for label, share in drawing.items())
    print(f"drawing and logging the pictures (log_pass, PNGs) / the monitor's whole pass, median: {shares}")


if __name__ == "__main__":
    main()
