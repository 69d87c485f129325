"""What a monitor records about itself and its run, so that two runs differing in one setting can be told apart."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Trainer
from torch import nn

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M
from lightning_vitx.analysis import FOCUS_STATISTICS

__all__ = [
    "FLOOR_SUFFIXES",
    "maybe_region_key",
    "metric_keys",
    "score_keys",
    "named_options",
    "explained_epoch",
    "find_class_names",
    "is_name_list",
    "model_name",
    "monitor_score_keys",
    "monitor_settings",
    "resolved_options",
    "score_axes",
]


def named_options(spec: Sequence[str] | Mapping[str, Mapping[str, Any]], check: Any) -> dict[str, dict[str, Any]]:
    """``["a", "b"]`` or ``{"a": {...}}`` -> ``{name: options}``; ``check(name)`` raises for an unknown name."""
    options = {name: dict(o) for name, o in spec.items()} if isinstance(spec, Mapping) else {n: {} for n in spec}
    for name in options:
        check(name)
    return options


def monitor_settings(monitor: Any, model: nn.Module | None) -> dict[str, Any]:
    """An ``ExplainabilityMonitor``'s settings, every explainer's and metric's options resolved.

    Lists of names where a user filters runs, the package version and the model's timm name (None before setup).
    """
    from lightning_vitx._version import __version__

    explainers = {n: resolved_options(X.get_class(n), o) for n, o in monitor.explainer_options.items()}
    metrics = {n: resolved_options(M.get_class(n), o) for n, o in monitor.metric_options.items()}
    return {
        "version": __version__,
        "name": monitor.name,
        "model": None if model is None else model_name(model),
        "explainers": monitor.explainer_names,
        "explainer_options": explainers,
        "metrics": monitor.metric_names,
        "metric_options": metrics,
        "num_samples": monitor.num_samples,
        "panel_size": monitor.panel_size,
        "batch_size": monitor.batch_size,
        "every_n_epochs": monitor.every_n_epochs,
        "target": monitor.target,
        "held_out": "dataloader" if monitor.dataloader is not None else "validation",
        "per_map_scale": monitor.per_map_scale,
        "pixel_maps": monitor.pixel_maps,
        "sanity": monitor.sanity,
        "class_sensitive": {n: X.get_info(n).class_sensitive for n in monitor.explainer_names},
        "class_names": monitor.class_names,
        "on_error": monitor.on_error,
        "reference_curves": monitor.reference_curves,
        "alerts": {rule.key: {rule.kind: rule.threshold, "patience": rule.patience} for rule in monitor.alerts.rules},
        "save_passes": monitor.save_passes,
    }


FLOOR_SUFFIXES = ("random", "vs_random")  # <key>/random: the random maps' score; <key>/vs_random: the score minus it


def metric_keys(metrics: Sequence[str], regions: Sequence[str] = ()) -> list[str]:
    """A monitor's metric keys: ``<metric>``, and ``<metric>/<region>`` per named region for a mask metric.

    Example::

        >>> metric_keys(["deletion", "relevance_mass"], ["object", "shortcut"])
        ['deletion', 'relevance_mass/object', 'relevance_mass/shortcut']
    """
    return [
        f"{metric}/{region}" if region else metric
        for metric in metrics
        for region in (regions if regions and M.get_info(metric).needs_masks else [""])
    ]


def score_keys(
    prefix: str,
    explainers: Sequence[str],
    metrics: Sequence[str],
    sanity: bool,
    alerts: bool = False,
    *,
    regions: Sequence[str] = (),
    floor: bool = False,
) -> list[str]:
    """Every key a monitor logs.

    ``<prefix>/<explainer>/<metric>`` (a mask metric with named ``regions``: ``.../<metric>/<region>`` per region),
    with ``floor`` ``.../<metric>/random`` (random maps' score) and ``.../<metric>/vs_random`` (the score minus it)
    beside each, ``<prefix>/<explainer>/stability``, ``<prefix>/<explainer>/skipped`` (maps the metrics skip: NaN
    or inf, all zero, constant), ``.../skipped/<reason>`` (``nonfinite``, ``zero``,
    ``flat``), ``.../degenerate`` (their share of the explained maps), ``.../conservation`` (``lrp``,
    ``attnlrp``: the map's sum over the relevance it starts from, the target logit or 1), with ``sanity``
    ``<prefix>/<explainer>/randomization`` and ``.../class_sensitivity``, ``<prefix>/dropped`` (held-out samples
    left out), ``<prefix>/<explainer>/focus/{entropy,gini,top10}`` (where relevance sits:
    ``analysis.focus_statistics``), ``<prefix>/time_s``, and with ``alerts`` ``<prefix>/alerts`` (alerts fired so
    far).
    """
    keys_of_metrics = metric_keys(metrics, regions)
    floors = [f"{key}/{suffix}" for key in keys_of_metrics for suffix in FLOOR_SUFFIXES] if floor else []
    per_explainer = [
        *keys_of_metrics,
        *floors,
        "stability",
        "skipped",
        "degenerate",
        *(f"skipped/{k}" for k in M.DEGENERATE_KINDS),
    ]
    per_explainer += [f"focus/{stat}" for stat in FOCUS_STATISTICS]
    per_explainer += ["randomization", "class_sensitivity"] if sanity else []
    keys = [f"{prefix}/{e}/{key}" for e in explainers for key in per_explainer]
    keys += [f"{prefix}/{e}/conservation" for e in explainers if X.get_info(e).relevance_seed]
    return [*keys, f"{prefix}/dropped", f"{prefix}/time_s", *([f"{prefix}/alerts"] if alerts else [])]


def maybe_region_key(key: str, prefix: str, metrics: Sequence[str]) -> bool:
    """Whether ``key`` may be a named region's score (``<prefix>/<explainer>/<mask metric>/<region>[/random]``).

    Until the first batch names the regions, a watcher or alert on such a key is accepted; it is checked again then.
    """
    parts = key.removeprefix(f"{prefix}/").split("/")
    if len(parts) not in (3, 4) or parts[1] not in metrics or not M.get_info(parts[1]).needs_masks:
        return False
    return parts[2] not in FLOOR_SUFFIXES and (len(parts) == 3 or parts[3] in FLOOR_SUFFIXES)


def monitor_score_keys(monitor: Any) -> list[str]:
    """Every key an ``ExplainabilityMonitor`` logs (:func:`score_keys` of its settings and regions)."""
    return score_keys(
        monitor.name,
        monitor.explainer_names,
        monitor.metric_names,
        monitor.sanity,
        bool(monitor.alerts.rules),
        regions=monitor.regions or (),
        floor=monitor.reference_curves,
    )


def score_axes(
    prefix: str, explainers: Sequence[str], metrics: Sequence[str], sanity: bool = False
) -> dict[str, dict[str, bool]]:
    """``{metric: {"<prefix>/<explainer>/<metric>": higher_is_better}}``: one chart per metric, with stability.

    ``sanity``: the randomization (lower is better) and class-sensitivity charts too.
    """
    axes = {
        metric: {f"{prefix}/{e}/{metric}": bool(M.get_info(metric).higher_is_better) for e in explainers}
        for metric in metrics
    }
    axes["stability"] = {f"{prefix}/{e}/stability": True for e in explainers}
    if sanity:
        axes["randomization"] = {f"{prefix}/{e}/randomization": False for e in explainers}
        axes["class_sensitivity"] = {f"{prefix}/{e}/class_sensitivity": True for e in explainers}
    return axes


def is_name_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(c, str) for c in value)


def find_class_names(trainer: Trainer) -> list[str] | None:
    """The datamodule's or the validation dataset's ``classes`` (torchvision's convention), when it has them."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    for source in (trainer.datamodule, getattr(loader, "dataset", None)):  # type: ignore[attr-defined]
        classes = getattr(source, "classes", None)
        if is_name_list(classes):
            return [str(name) for name in classes]  # type: ignore[union-attr]
    return None


def explained_epoch(trainer: Trainer) -> int:
    """The training epoch whose end state a validation pass sees: ``-1`` before any training step.

    In ``fit``, the epoch in progress; in ``validate`` after training, the last finished one.
    """
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer.global_step == 0:
        return -1
    return trainer.current_epoch if trainer.state.fn == TrainerFn.FITTING else trainer.current_epoch - 1


def resolved_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor option of ``cls`` with the value it gets: its default, or what ``options`` set.

    The model argument, ``*args`` and ``**kwargs`` are left out; values become plain (tuples -> lists, other objects
    -> their ``repr``) so a run config can filter on them.

    Example::

        >>> from lightning_vitx.explainers import AttentionRollout
        >>> resolved_options(AttentionRollout, {"head_fusion": "max"})
        {'head_fusion': 'max', 'discard_ratio': 0.0, 'start_layer': 0}
    """
    resolved: dict[str, Any] = {}
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    for name, parameter in list(parameters.items())[1:]:
        if name == "model" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = None if parameter.default is parameter.empty else parameter.default
        resolved[name] = _plain(options.get(name, default))
    resolved.update({name: _plain(value) for name, value in options.items() if name not in resolved})
    return resolved


def model_name(model: nn.Module) -> str:
    """The timm architecture name when the model has one (``pretrained_cfg``), else its class name."""
    config = getattr(model, "pretrained_cfg", None) or {}
    return str(config.get("architecture") or type(model).__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return repr(value)


def higher_is_better(key: str, prefix: str) -> bool:
    """The direction of a monitor's score key, for alerts: the metric's ``higher_is_better``, else by its kind.

    Example::

        >>> [higher_is_better(key, "explain") for key in ("explain/rollout/deletion", "explain/gmar/focus/gini")]
        [False, True]
    """
    parts = key.removeprefix(f"{prefix}/").split("/")
    for part in parts:
        if part in M.available():
            return bool(M.get_info(part).higher_is_better)
    lower = {"randomization", "degenerate", "skipped", "dropped", "time_s", "alerts", "entropy"}
    return not lower.intersection(parts)
