"""Golden monitor scores: what a short fit logs, on the defaults and on every explainer, recorded once.

A change to how the monitor scores (shared endpoints, one stream of perturbed images) must not move a score.
``tests/callbacks/test_monitor_scores.py`` reruns these fits and compares every logged score, the mean curves,
the random-order reference curves and the last pass's per-sample scores with ``tests/fixtures/monitor_scores.pt``
by ``==``. Record them again only when a score is meant to change, and say why in the commit::

    .venv/bin/python tests/monitor_scores.py --write
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes

GOLDEN = Path(__file__).parent / "fixtures" / "monitor_scores.pt"
# every explainer when these scores were recorded (one registered later is not in the recording)
EXPLAINERS = [
    "attnlrp", "generic_attention", "gmar", "gradcam", "layernorm_stats", "lrp", "partial_lrp", "patch_interaction",
    "raw_attention", "rollout", "tokentm", "transformer_attribution",
]  # fmt: skip
CASES: dict[str, tuple[dict[str, Any], int]] = {  # monitor options, epochs
    "defaults": ({}, 2),
    # every explainer and every perturbation metric; 5 samples in batches of 2: partly filled chunks everywhere
    "every explainer": (
        {
            "explainers": EXPLAINERS,
            "metrics": {
                "deletion": {"steps": 4},
                "insertion": {"steps": 4, "baseline": "mean"},
                "positive_perturbation": {"fractions": (0.0, 0.3, 0.6, 0.9)},
                "negative_perturbation": {"fractions": (0.0, 0.3, 0.6, 0.9)},
                "pointing_game": {},
            },
            "num_samples": 5,
            "batch_size": 2,
            "panel_size": 2,
        },
        1,
    ),
}


def rowwise_head(model: nn.Module) -> None:
    """Make the classifier's outputs under ``no_grad`` independent of the batch size: one row at a time.

    A stock ``nn.Linear`` on ``[B, D]`` gives each row bits that depend on ``B`` (the BLAS kernel MKL picks for the
    product: on this project's CPU rows differ between ``B`` in {1}, {2..4}, {5..10}, {11+}), and the head is the
    only layer of the model where that shows (the blocks multiply ``B * tokens`` rows). The scoring's forwards run
    without gradients; the explainers' passes (with gradients) keep the stock head, so no explainer sees a change.
    """

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if torch.is_grad_enabled():
            return None
        return torch.cat([F.linear(row[None], module.weight, module.bias) for row in inputs[0]]).to(output)

    model.get_classifier().register_forward_hook(hook)


class Classifier(L.LightningModule):
    def __init__(self, rowwise: bool) -> None:
        super().__init__()
        self.backbone = tiny_vit_for_shapes(32, seed=0)
        if rowwise:
            rowwise_head(self.backbone)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        return F.cross_entropy(self.backbone(images), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels, _ = batch
        self.log("val_loss", F.cross_entropy(self.backbone(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(ShapesDataset(32, 32, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ShapesDataset(32, 32, seed=1), batch_size=8)


def scores(case: str, rowwise: bool) -> dict[str, Any]:
    """A short fit with the case's monitor: its logged scores per epoch, curves and last per-sample scores.

    ``rowwise``: the head's outputs without gradients are independent of the batch size (:func:`rowwise_head`).
    """
    L.seed_everything(0, verbose=False)
    options, epochs = CASES[case]
    monitor = ExplainabilityMonitor(**options)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            callbacks=[monitor],
            default_root_dir=root,
            accelerator="cpu",
            devices=1,
            limit_train_batches=2,
            limit_val_batches=2,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(Classifier(rowwise))
    scoring = monitor.scoring
    return {
        "history": [{k: v for k, v in row.items() if not k.endswith("/time_s")} for row in monitor.history],
        "curves": {m: {e: torch.as_tensor(y) for e, (_, y) in c.items()} for m, c in scoring.curves.items()},
        "reference": {m: torch.as_tensor(y) for m, (_, y) in scoring.reference_curves.items()},
        "sample_scores": dict(scoring.sample_scores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    parser.add_argument("--out", type=Path, default=None, help="write here instead (to compare two checkouts)")
    args = parser.parse_args()
    recorded = {(case, rowwise): scores(case, rowwise) for case in CASES for rowwise in (False, True)}
    if args.write or args.out:
        torch.save(recorded, args.out or GOLDEN)
    for case, result in recorded.items():
        print(case, len(result["history"]), "passes,", len(result["history"][-1]), "scores")


if __name__ == "__main__":
    main()
