"""The monitor's pictures: the panel rows gathered from every rank, and what one pass logs of them.

``pass_record`` turns the rows into a :class:`~lightning_vitx.loggers.PassRecord`: captioned per-sample images (the
inputs with their mask outlined, one overlay per explainer on its shared colour scale), the perturbation curves,
the per-sample table, and the composite panel for the PNG fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

from lightning_vitx.adapters import Target, model_mean_std
from lightning_vitx.callbacks._collectives import gather_rows
from lightning_vitx.callbacks._explaining import MonitorPass
from lightning_vitx.callbacks._settings import model_name
from lightning_vitx.loggers import PassRecord, SampleImages
from lightning_vitx.metrics import as_masks

__all__ = ["PanelRows", "gather_panel", "panel_pixel_maps", "pass_record"]


@dataclass
class PanelRows:
    """The first ``panel_size`` held-out samples by global id, gathered from every rank for the panel and table."""

    ids: Tensor  # [P] global sample ids, ascending
    images: Tensor  # [P, C, H, W] as the model takes them
    labels: Tensor | None  # [P]
    masks: Tensor | None  # [P, H, W] bool: the ground-truth objects, where the data has masks
    probabilities: Tensor  # [P, classes] from the clean forward of the scoring
    maps: dict[str, Tensor]  # explainer -> [P, gh, gw]
    scores: dict[str, Tensor]  # "explainer/metric" -> [P]


def gather_panel(
    trainer: Trainer,
    monitor_pass: MonitorPass,
    maps: Mapping[str, Tensor],
    *,
    probabilities: Tensor | None,
    sample_scores: Mapping[str, Tensor],
) -> PanelRows | None:
    """The first ``panel_size`` held-out samples by global id, with what the panel and table show, from all ranks.

    Call it on every rank (it gathers) with the same pass settings. Each rank sends its first ``panel_size`` held-out
    rows (its smallest ids), with their ``maps`` (``{explainer: [N, gh, gw]}``), ``probabilities``
    (``[N, classes]``) and ``sample_scores`` (``{"explainer/metric": [N]}``); an explainer, label or score column
    is kept when every shown row has it. None when no rank holds a sample.
    """
    panel_size, samples, explainer_names, score_keys = (
        monitor_pass.panel_size,
        monitor_pass.samples,
        list(monitor_pass.explainers),
        monitor_pass.score_keys,
    )
    rows: dict[str, Tensor | None] = dict.fromkeys(["ids", "images", "labels", "masks", "probabilities"])
    rows.update({f"map/{name}": None for name in explainer_names})
    rows.update({f"score/{key}": None for key in score_keys})
    images = samples.get("images")
    if images is not None and images.shape[0] > 0 and probabilities is not None:
        first = slice(0, panel_size)  # rows are kept in ascending id order
        for key in ("ids", "images", "labels"):
            value = samples.get(key)
            rows[key] = None if value is None else value[first]
        masks = samples.get("masks")
        rows["masks"] = None if masks is None else as_masks(masks[first]).float()
        rows["probabilities"] = probabilities[first]
        rows.update({f"map/{name}": maps[name][first] for name in explainer_names if name in maps})
        rows.update({f"score/{key}": sample_scores[key][first] for key in score_keys if key in sample_scores})
    gathered, valid = gather_rows(trainer, rows, panel_size, monitor_pass.run.device)
    if "ids" not in gathered or "probabilities" not in gathered:
        return None
    real = valid["ids"].nonzero()[:, 0]
    shown = real[gathered["ids"][real].argsort()][:panel_size]

    def column(key: str) -> Tensor | None:
        return gathered[key][shown] if key in gathered and bool(valid[key][shown].all()) else None

    labels, masks = column("labels"), column("masks")
    panel_maps = {name: column(f"map/{name}") for name in explainer_names}
    panel_scores = {key: column(f"score/{key}") for key in score_keys}
    return PanelRows(
        ids=gathered["ids"][shown].long(),
        images=gathered["images"][shown],
        labels=None if labels is None else labels.long(),
        masks=None if masks is None else masks > 0.5,
        probabilities=gathered["probabilities"][shown],
        maps={name: m for name, m in panel_maps.items() if m is not None},
        scores={key: s for key, s in panel_scores.items() if s is not None},
    )


def panel_pixel_maps(
    model: nn.Module,
    panel: PanelRows,
    options: Mapping[str, Mapping[str, Any]],
    labels: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, Exception]]:
    """``{name: [P, H, W]}``: the panel's maps at the pixels, for its explainers with a pixel map of their own.

    Each explainer is built with its ``options`` and explains ``labels`` (else the panel's predicted classes) on the
    model's device; maps come back on the CPU. One that raises is left out, its error returned under its name.
    """
    import lightning_vitx.explainers as X

    device = next(model.parameters()).device
    images = panel.images.to(device)
    target = (panel.probabilities.argmax(dim=1) if labels is None else labels).to(device)
    found: dict[str, Tensor] = {}
    errors: dict[str, Exception] = {}
    for name in [name for name in panel.maps if X.get_info(name).pixel_map]:
        try:
            explainer: Any = X.create(name, model, **options.get(name, {}))
            found[name] = explainer.pixel_relevance(images, target).cpu()
        except Exception as error:  # noqa: BLE001 - a picture must not cost the run; the caller decides
            errors[name] = error
    return found, errors


def class_name(index: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``index`` (its number when there are no names, or too few)."""
    return class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)


def pass_record(
    record: PassRecord,
    monitor_pass: MonitorPass,
    panel: PanelRows,
    *,
    curves: Mapping[str, Mapping[str, Any]] | None = None,
    reference_curves: Mapping[str, Any] | None = None,
    pixel_maps: Mapping[str, Tensor] | None = None,
) -> PassRecord:
    """Fill ``record`` (scalars, epoch and step already set) with the pictures of one pass.

    Keys: ``<prefix>/inputs`` and ``<prefix>/<explainer>/maps`` (one captioned picture per shown sample; each
    explainer's maps share one colour scale unless ``per_map_scale``), ``<prefix>/curves`` (``curves``: metric ->
    explainer -> (fractions, mean curve), with the random order's ``reference_curves``), ``<prefix>/samples`` (the
    table), with ``patch_interaction`` among the explainers ``<prefix>/patch_interaction/erf`` (each patch's
    receptive-field tendency and size) and ``.../erf_size`` (per block), and for the PNG fallback
    ``<prefix>/panel`` (drawn only when written). Figures are kept as pixels (``rendering.Picture``), drawn once.
    ``pixel_maps`` (``{explainer: [P, H, W]}``, signed relevance) are drawn in place of those explainers' patch maps,
    on a signed scale.
    """
    import lightning_vitx.explainers as X
    from lightning_vitx.rendering import (
        curves_figure,
        denormalize,
        describe,
        map_states,
        overlay,
        panel_figure,
        per_map_scales,
        rasterize,
        shared_scale,
        with_colour_bar,
    )

    prefix, model, class_names = monitor_pass.prefix, monitor_pass.run.model, monitor_pass.class_names
    record.maps, record.sample_ids = {name: m.cpu() for name, m in panel.maps.items()}, panel.ids.tolist()
    per_map_scale, by_label = monitor_pass.per_map_scale, monitor_pass.run.by_label
    curves, reference_curves = curves or {}, reference_curves or {}
    predicted = panel.probabilities.argmax(1)
    captions, short = [], []
    for i, p in enumerate(predicted.tolist()):
        true = "" if panel.labels is None else f"true {class_name(int(panel.labels[i]), class_names)}, "
        guess = f"pred {class_name(p, class_names)} ({panel.probabilities[i, p]:.2f})"
        captions.append(f"sample {int(panel.ids[i])}: {true}{guess}")
        short.append(f"#{int(panel.ids[i])} {true}{guess}")
    mean, std = model_mean_std(model)
    masks = None if panel.masks is None else [m.numpy() for m in panel.masks]

    def to_uint8(rgb: Tensor) -> list[Any]:
        return list((rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy())

    pictures = to_uint8(denormalize(panel.images.float(), mean, std))
    record.images[f"{prefix}/inputs"] = SampleImages(pictures, captions, masks)
    pixel_maps = pixel_maps or {}
    shown = {**panel.maps, **pixel_maps}  # the panel's order; pixel maps in place of their patch maps
    signed = {name: X.get_info(name).signed or name in pixel_maps for name in shown}

    def barred_masks(barred: Tensor) -> list[Any] | None:  # the masks, padded below to the colour bar's rows
        extra = barred.shape[-2] - panel.images.shape[-2]
        return None if masks is None else [np.pad(m, ((0, extra), (0, 0))) for m in masks]

    overlays, map_masks = {}, None
    for name, maps in shown.items():
        scales = per_map_scales(maps, signed[name]) if per_map_scale else [shared_scale(maps, signed[name])] * len(maps)
        drawn = overlay(panel.images, maps, mean, std, scale=scales, signed=signed[name])
        # each picture carries its colour scale: a strip below it, the range and the map's state in its caption
        if per_map_scale:
            barred = torch.cat([with_colour_bar(d[None], s) for d, s in zip(drawn, scales, strict=True)])
        else:  # one scale: one strip for the batch
            barred = with_colour_bar(drawn, scales[0])
        overlays[name] = to_uint8(barred)
        states = map_states(maps)
        map_captions = [
            f"{caption}; {name}: {describe(scale)}" + (f", {state}" if state else "")
            for caption, scale, state in zip(captions, scales, states, strict=True)
        ]
        map_masks = barred_masks(barred)
        record.images[f"{prefix}/{name}/maps"] = SampleImages(overlays[name], map_captions, map_masks)

    title = f"epoch {record.epoch}" if record.epoch >= 0 else "before training"
    explained = "label" if by_label else "predicted class"
    title += f", {model_name(model)}, {explained} explained"
    if monitor_pass.disabled:
        title += f"; disabled after a failure: {', '.join(sorted(monitor_pass.disabled))}"
    record.fallback_figures[f"{prefix}/panel"] = partial(  # drawn only when no logger takes images
        panel_figure, panel.images, shown, mean, std, short, signed=signed, per_map=per_map_scale, title=title,
        masks=panel.masks,
    )  # fmt: skip
    if curves:
        lines = {metric: dict(per_explainer) for metric, per_explainer in curves.items()}
        # drawn once here: every logger, the PNG fallback and a saved pass read the same pixels
        record.figures[f"{prefix}/curves"] = rasterize(curves_figure(lines, reference_curves, title=title))
        record.curves = {
            m: {**lines[m], **({"random order": reference_curves[m]} if m in reference_curves else {})} for m in lines
        }

    if any(X.get_info(name).receptive_field_figures for name in panel.maps):  # one more pass, rank zero only
        device = next(model.parameters()).device
        explained_class = panel.labels if by_label and panel.labels is not None else predicted
        figures = interaction_figures(model, panel.images.to(device), explained_class.to(device), captions=short)
        name = next(name for name in panel.maps if X.get_info(name).receptive_field_figures)
        record.figures.update({f"{prefix}/{name}/{key}": figure for key, figure in figures.items()})

    score_keys = sorted(panel.scores)
    columns = ["sample", "epoch", "image", "label", "prediction", "probability", "correct", *panel.maps, *score_keys]
    rows = []
    for i, sample_id in enumerate(panel.ids.tolist()):
        p = int(predicted[i])
        label = None if panel.labels is None else int(panel.labels[i])
        cell = SampleImages([pictures[i]], [captions[i]], None if masks is None else [masks[i]])
        row = [sample_id, record.epoch, cell, None if label is None else class_name(label, class_names)]
        row += [class_name(p, class_names), float(panel.probabilities[i, p]), None if label is None else p == label]
        row += [SampleImages([overlays[name][i]], [captions[i]], map_masks and [map_masks[i]]) for name in panel.maps]
        row += [float(panel.scores[key][i]) for key in score_keys]
        rows.append(row)
    record.table = (columns, rows)
    return record


def interaction_figures(
    model: nn.Module, images: Tensor, target: Target = None, captions: Sequence[str] | None = None
) -> dict[str, Any]:
    """The patch-interaction pictures a monitor logs for a batch: ``{"erf": ..., "erf_size": ...}``, as ``Picture``.

    One capture pass (``patch_interactions``, its default indicator and mass); the images are shown as the model's
    normalisation undoes them; the size curve is drawn once (``rasterize``). The fields are the block before the
    last: with a class-token head the last block's patch rows do not reach the logits, so their gradient indicator
    is zero there.
    """
    from lightning_vitx.analysis import patch_interactions
    from lightning_vitx.rendering import erf_figure, erf_size_figure, rasterize

    mean, std = model_mean_std(model)
    result = patch_interactions(model, images, target)
    return {
        "erf": erf_figure(images, result, mean, std, layer=-2, captions=captions),
        "erf_size": rasterize(erf_size_figure(result, captions=captions)),
    }
