"""Configuration mistakes the monitor can see before training: each a clear error naming the fix.

``check_monitor_options`` (the arguments), ``check_setup`` (what ``setup`` sees: other monitors, an empty held-out
loader), ``check_watchers`` (checkpoint and early-stopping callbacks watching the monitor's keys) and
``first_validation_batch`` (one batch read at ``on_fit_start`` when no sanity check will read one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch

from lightning_vitx._checks import check_choice
from lightning_vitx.callbacks._settings import is_name_list, maybe_region_key
from lightning_vitx.callbacks.alerts import AlertRules
from lightning_vitx.callbacks.errors import MonitorConfigError

__all__ = [
    "check_alert_keys",
    "check_monitor_options",
    "check_ranking_watcher",
    "check_setup",
    "check_watchers",
    "first_validation_batch",
]


def check_monitor_options(
    *,
    num_samples: int,
    panel_size: int,
    every_n_epochs: int,
    batch_size: int,
    target: str,
    on_error: str,
    dataloader: Any,
    name: str,
    class_names: Any,
    model_attribute: str | None,
) -> None:
    """The monitor's arguments, checked: a ``ValueError`` / ``TypeError`` naming the argument and what it takes."""
    from torch.utils.data import DataLoader

    for option, value in [
        ("num_samples", num_samples),
        ("panel_size", panel_size),
        ("every_n_epochs", every_n_epochs),
        ("batch_size", batch_size),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be a positive int, got {value!r}")
    check_choice("target", target, ("pred", "label"))
    check_choice("on_error", on_error, ("warn", "raise"))
    if dataloader is not None and not isinstance(dataloader, DataLoader):
        raise TypeError(
            f"dataloader must be a torch.utils.data.DataLoader or None, got {type(dataloader).__name__}; "
            "wrap the held-out dataset: dataloader=DataLoader(dataset, batch_size=...)"
        )
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"name must be a non-empty string without a leading or trailing '/', got {name!r}")
    if class_names is not None and not is_name_list(class_names):
        raise TypeError(f"class_names must be a list of strings (class index -> name) or None, got {class_names!r}")
    if model_attribute is not None and (not isinstance(model_attribute, str) or not model_attribute):
        raise ValueError(f"model_attribute must be a dotted attribute path or None, got {model_attribute!r}")


def check_setup(monitor: Any, trainer: Any) -> None:
    """Mistakes only ``setup`` can see: another monitor under the same ``name``, an empty ``dataloader=``."""
    for other in trainer.callbacks:
        if other is not monitor and type(other) is type(monitor) and other.name == monitor.name:
            raise MonitorConfigError(
                f"two ExplainabilityMonitors share name={monitor.name!r}: their keys, pictures and files would "
                "overwrite each other; give each its own name, e.g. ExplainabilityMonitor(..., name='explain_student')"
            )
    loader = monitor.dataloader
    try:
        empty = loader is not None and len(loader) == 0
    except TypeError:  # an iterable dataset without a length: read at the first explained epoch
        empty = False
    if empty:
        raise MonitorConfigError(
            "ExplainabilityMonitor(dataloader=...) holds no batch: pass a DataLoader over the held-out samples, or "
            "leave dataloader=None to explain the first validation samples"
        )


def check_ranking_watcher(callback: Any, key: str, every_n_epochs: int) -> None:
    """A checkpoint callback that would rank epochs the monitor never explained: a ``MonitorConfigError``.

    Between explained epochs the monitor carries the last explained scores to ``callback_metrics`` (so a watcher
    finds its key every epoch). A ``ModelCheckpoint`` keeping its ``save_top_k >= 2`` best would rank those
    carried copies as if the epoch had been explained (``3-0.5393.ckpt`` beside ``2-0.5393.ckpt``); saving only on
    explained epochs (its ``every_n_epochs`` a multiple of the monitor's) ranks none of them.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    if every_n_epochs == 1 or not isinstance(callback, ModelCheckpoint):
        return
    top_k, saves_every = callback.save_top_k, callback._every_n_epochs
    if top_k >= 2 and (not saves_every or saves_every % every_n_epochs):
        raise MonitorConfigError(
            f"ModelCheckpoint(monitor={key!r}, save_top_k={top_k}) would rank epochs the monitor does not explain "
            f"(every_n_epochs={every_n_epochs}: between them it carries the last explained score); save only on "
            f"explained epochs: ModelCheckpoint(..., every_n_epochs={every_n_epochs})"
        )


def check_watchers(
    callbacks: Iterable[Any],
    name: str,
    keys: set[str],
    every_n_epochs: int,
    pending: Callable[[str], bool] | None = None,
) -> None:
    """A ``MonitorConfigError`` now for a watcher of a ``<name>/...`` key that would go wrong later.

    A ModelCheckpoint / EarlyStopping watching a key the monitor never logs (``pending(key)``: a key that may be
    logged, not known yet), or one ranking carried scores (``check_ranking_watcher``).
    """
    for callback in callbacks:
        watched = getattr(callback, "monitor", None)
        if not isinstance(watched, str) or not watched.startswith(f"{name}/"):
            continue
        if watched not in keys and not (pending and pending(watched)):
            raise MonitorConfigError(
                f"{type(callback).__name__}(monitor={watched!r}) watches a key this ExplainabilityMonitor never "
                f"logs; it logs {sorted(keys)}"
            )
        check_ranking_watcher(callback, watched, every_n_epochs)


def check_alert_keys(alerts: AlertRules, keys: Sequence[str], pending: Callable[[str], bool] | None = None) -> None:
    """A ``MonitorConfigError`` for an alert rule on a key the monitor never logs (``pending``: as check_watchers)."""
    unknown = sorted(rule.key for rule in alerts.rules if rule.key not in keys and not (pending and pending(rule.key)))
    if unknown:
        raise MonitorConfigError(
            f"ExplainabilityMonitor(alerts=...) has rules for keys it never logs: {unknown}; it logs {sorted(keys)}"
        )


def check_logged_keys(monitor: Any, trainer: Any) -> None:
    """Watchers and alert rules of ``monitor``'s keys, checked (``check_watchers``, ``check_alert_keys``).

    A named region's keys are known from the first batch: until it is read they are accepted, and the alert rules
    are checked again then.
    """
    pending = None
    if monitor.regions is None:
        pending = partial(maybe_region_key, prefix=monitor.name, metrics=monitor.metric_names)
    keys = monitor.score_keys()
    check_watchers(trainer.callbacks, monitor.name, set(keys), monitor.every_n_epochs, pending)
    check_alert_keys(monitor.alerts, keys, pending)


def first_validation_batch(trainer: Any, pl_module: Any, dataloader: Any) -> Any:
    """The first batch of ``dataloader`` or of the validation loader (``None`` if there is none).

    Read with the global RNG restored after, so training draws what it would have drawn without the monitor.
    """
    with torch.random.fork_rng(devices=[]):
        loader = dataloader if dataloader is not None else _user_val_loader(trainer, pl_module)
        return None if loader is None else next(iter(loader), None)


def _user_val_loader(trainer: Any, pl_module: Any) -> Any:
    source = trainer.datamodule if trainer.datamodule is not None else pl_module
    try:
        loader = source.val_dataloader()
    except Exception:  # noqa: BLE001 - no such hook (loaders passed to fit): checked at the first batch instead
        return None
    return loader[0] if isinstance(loader, (list, tuple)) and loader else loader
