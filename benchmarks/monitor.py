"""The monitor's cost per validation epoch at the demo's default settings, printed as a table.

    python benchmarks/monitor.py

Validates the demo's tiny ViT on the synthetic shapes (256 validation images, two decoys each) without and with the
ExplainabilityMonitor (every explainer, four metrics, 32 held-out samples) and reports the added time
relative to the plain validation epoch, and the explaining + scoring cost per sample in units of one
forward pass of one image. Quote the ratios, not the seconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import lightning as L
import torch

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ShapesDataModule

MODEL_KWARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
METRICS = ["deletion", "insertion", "pointing_game", "relevance_mass"]


def validate(module: L.LightningModule, data: L.LightningDataModule, callbacks: list) -> tuple[float, float]:
    """Seconds for one validation run, and the monitor's own explain + score seconds (0 without it)."""
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
    trainer.validate(module, datamodule=data, verbose=False)
    return time.perf_counter() - start, float(trainer.callback_metrics.get("explain/time_s", 0.0))


def main(repeats: int = 3, num_samples: int = 32) -> None:
    torch.manual_seed(0)
    module = TimmClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs=MODEL_KWARGS)
    data = ShapesDataModule(image_size=64, val_size=256, batch_size=64, distractors=2)  # as the demo
    validate(module, data, [])  # warm-up
    plain = statistics.median(validate(module, data, [])[0] for _ in range(repeats))

    def monitored(sanity: bool) -> list[tuple[float, float]]:
        options = dict(explainers=X.available(), metrics=METRICS, num_samples=num_samples, sanity=sanity)
        return [validate(module, data, [ExplainabilityMonitor(**options)]) for _ in range(repeats)]

    without_sanity = monitored(False)
    runs = monitored(True)
    with_monitor = statistics.median(total for total, _ in runs)
    per_sample = statistics.median(explain for _, explain in runs) / num_samples
    sanity_cost = statistics.median(e for _, e in runs) / statistics.median(e for _, e in without_sanity)
    images = torch.randn(64, 3, 64, 64)
    with torch.no_grad():
        module.model(images)
        start = time.perf_counter()
        for _ in range(repeats):
            module.model(images)
        forward_per_image = (time.perf_counter() - start) / repeats / images.shape[0]

    print(
        f"\ndemo defaults: {len(X.available())} explainers, {len(METRICS)} metrics, {num_samples} samples; "
        f"256 validation images; CPU, {torch.get_num_threads()} threads"
    )
    print("| quantity | ratio |")
    print("|---|---|")
    print(f"| validation epoch with monitor / without | {with_monitor / plain:.2f} |")
    print(f"| added time / plain validation epoch | {(with_monitor - plain) / plain:.2f} |")
    print(f"| explain + score per sample / one forward of one image | {per_sample / forward_per_image:.0f} |")
    print(f"| monitor's pass with the sanity scores / without | {sanity_cost:.2f} |")
    print(
        f"| per sample per explainer-metric pair / one forward | "
        f"{per_sample / forward_per_image / (len(X.available()) * len(METRICS)):.1f} |"
    )


if __name__ == "__main__":
    main()
