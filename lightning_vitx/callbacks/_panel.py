"""The monitor's pictures: the panel rows gathered from every rank, the heatmap panel, curves and the W&B table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

from lightning_vitx.callbacks._collectives import gather_rows
from lightning_vitx.loggers import curves_figure, log_figure, log_table

__all__ = ["PanelRows", "gather_panel", "log_pictures"]


@dataclass
class PanelRows:
    """The first ``panel_size`` held-out samples by global id, gathered from every rank for the panel and table."""

    ids: Tensor  # [P] global sample ids, ascending
    images: Tensor  # [P, C, H, W] as the model takes them
    labels: Tensor | None  # [P]
    probabilities: Tensor  # [P, classes] from the clean forward of the scoring
    maps: dict[str, Tensor]  # explainer -> [P, gh, gw]
    scores: dict[str, Tensor]  # "explainer/metric" -> [P]


def gather_panel(
    trainer: Trainer,
    device: torch.device,
    panel_size: int,
    samples: Mapping[str, Tensor | None],
    probabilities: Tensor | None,
    maps: Mapping[str, Tensor],
    sample_scores: Mapping[str, Tensor],
    explainer_names: Sequence[str],
    score_keys: Sequence[str],
) -> PanelRows | None:
    """The first ``panel_size`` held-out samples by global id, with what the panel and table show, from all ranks.

    Call it on every rank (it gathers), with the same ``explainer_names`` and ``score_keys``. Each rank sends its
    first ``panel_size`` rows (its smallest ids); an explainer, label or score column is kept when every shown row
    has it. None when no rank holds a sample.
    """
    rows: dict[str, Tensor | None] = dict.fromkeys(["ids", "images", "labels", "probabilities"])
    rows.update({f"map/{name}": None for name in explainer_names})
    rows.update({f"score/{key}": None for key in score_keys})
    images = samples.get("images")
    if images is not None and images.shape[0] > 0 and probabilities is not None:
        first = slice(0, panel_size)  # rows are kept in ascending id order
        for key in ("ids", "images", "labels"):
            value = samples.get(key)
            rows[key] = None if value is None else value[first]
        rows["probabilities"] = probabilities[first]
        rows.update({f"map/{name}": maps[name][first] for name in explainer_names if name in maps})
        rows.update({f"score/{key}": sample_scores[key][first] for key in score_keys if key in sample_scores})
    gathered, valid = gather_rows(trainer, rows, panel_size, device)
    if "ids" not in gathered or "probabilities" not in gathered:
        return None
    real = valid["ids"].nonzero()[:, 0]
    shown = real[gathered["ids"][real].argsort()][:panel_size]

    def column(key: str) -> Tensor | None:
        return gathered[key][shown] if key in gathered and bool(valid[key][shown].all()) else None

    labels = column("labels")
    panel_maps = {name: column(f"map/{name}") for name in explainer_names}
    panel_scores = {key: column(f"score/{key}") for key in score_keys}
    return PanelRows(
        ids=gathered["ids"][shown].long(),
        images=gathered["images"][shown],
        labels=None if labels is None else labels.long(),
        probabilities=gathered["probabilities"][shown],
        maps={name: m for name, m in panel_maps.items() if m is not None},
        scores={key: s for key, s in panel_scores.items() if s is not None},
    )


def log_pictures(
    trainer: Trainer,
    prefix: str,
    model: nn.Module,
    panel: PanelRows,
    curves: Mapping[str, Mapping[str, Any]],
    picture_dir: str,
    disabled: Sequence[str] = (),
    per_map_scale: bool = False,
) -> None:
    """From global rank zero: the heatmap panel, the perturbation curves and (on W&B) the per-sample table.

    Each explainer's maps share one colour scale (``per_map_scale`` scales each map to its own range).
    """
    import lightning_vitx.explainers as X
    from lightning_vitx.rendering import model_mean_std, panel_figure

    predicted = panel.probabilities.argmax(1)
    captions = []
    for i, p in enumerate(predicted.tolist()):
        label = f"label {int(panel.labels[i])}, " if panel.labels is not None else ""
        captions.append(f"{label}pred {p} ({panel.probabilities[i, p]:.2f})")
    mean, std = model_mean_std(model)
    signed = {name: X.get_info(name).signed for name in panel.maps}
    figure = panel_figure(panel.images, panel.maps, mean, std, captions, signed=signed, per_map=per_map_scale)
    if disabled:
        figure.suptitle(f"disabled after a failure: {', '.join(disabled)}", fontsize=9, color="tab:red")
    log_figure(trainer, f"{prefix}/panel", figure, trainer.global_step, picture_dir)
    if curves:
        figure = curves_figure({name: dict(lines) for name, lines in curves.items()})
        log_figure(trainer, f"{prefix}/curves", figure, trainer.global_step, picture_dir)
    _log_table(trainer, f"{prefix}/samples", panel, mean, std, signed, per_map_scale)


def _log_table(
    trainer: Trainer,
    key: str,
    panel: PanelRows,
    mean: Sequence[float],
    std: Sequence[float],
    signed: Mapping[str, bool],
    per_map_scale: bool,
) -> None:
    """One row per shown sample: id, image, label, prediction, one overlay per explainer, each per-sample score."""
    from lightning_vitx.rendering import denormalize, overlay, per_map_scales, shared_scale

    def to_uint8(rgb: Tensor) -> Any:
        return (rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()

    pictures = to_uint8(denormalize(panel.images, mean, std))
    overlays = {}
    for name, m in panel.maps.items():
        scale = per_map_scales(m, signed[name]) if per_map_scale else shared_scale(m, signed[name])
        overlays[name] = to_uint8(overlay(panel.images, m, mean, std, scale=scale, signed=signed[name]))
    score_keys = sorted(panel.scores)
    columns = ["sample", "image", "label", "prediction", "probability", *panel.maps, *score_keys]
    rows = []
    for i, sample_id in enumerate(panel.ids.tolist()):
        p = int(panel.probabilities[i].argmax())
        label = None if panel.labels is None else int(panel.labels[i])
        row = [sample_id, pictures[i], label, p, float(panel.probabilities[i, p])]
        row += [overlays[name][i] for name in panel.maps]
        row += [float(panel.scores[key][i]) for key in score_keys]
        rows.append(row)
    log_table(trainer, key, columns, rows, trainer.global_step)
