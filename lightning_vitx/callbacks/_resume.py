"""The monitor's checkpointed state: what it saves, and resuming from a checkpoint made with other settings.

A resume with other settings says so, and does what the change asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_vitx.callbacks._held_out import HeldOut

__all__ = [
    "Restored",
    "load_monitor_state",
    "monitor_state",
    "restore",
    "state_key_parts",
    "state_settings",
    "unclaimed_state",
]


@dataclass
class Restored:
    """What a monitor takes back from its checkpointed state."""

    samples: dict[str, Tensor | None]
    last_maps: dict[str, Tensor]
    history: list[dict[str, float]]
    explained_epochs: int
    sanity_reference: dict[str, Tensor]  # the first explained pass's maps: kept whatever changed


def state_key_parts(monitor: Any) -> dict[str, Any]:
    """What an ``ExplainabilityMonitor``'s state key is made of.

    Explainers, metrics, ``model_attribute`` when set, and ``name`` when it is not the default ``"explain"``.
    """
    keys: dict[str, Any] = {"explainers": monitor.explainer_names, "metrics": monitor.metric_names}
    if monitor.model_attribute is not None:  # two monitors on two models of one module: two states
        keys["model_attribute"] = monitor.model_attribute
    return keys if monitor.name == "explain" else {"name": monitor.name, **keys}


def state_settings(monitor: Any) -> dict[str, Any]:
    """The settings an ``ExplainabilityMonitor``'s state records, to reconcile a resume with (``restore``)."""
    return {
        "num_samples": monitor.num_samples,
        "own_dataloader": monitor.dataloader is not None,
        "explainers": monitor.explainer_options,
        "metrics": monitor.metric_options,
    }


def monitor_state(monitor: Any) -> dict[str, Any]:
    """An ``ExplainabilityMonitor``'s checkpointed state: settings, held-out samples, last maps, history."""
    sanity = monitor.sanity_scores
    return {
        "settings": state_settings(monitor),
        "samples": dict(monitor.samples),
        "last_maps": dict(monitor.last_maps),
        "failed": sorted(monitor._failed),
        "explained_epochs": monitor._explained_epochs,
        "history": list(monitor.history),
        "sanity_reference": dict(sanity.reference_maps) if sanity is not None else {},
        "alerts": monitor.alerts.state_dict(),
        "regions": monitor.regions,  # the masks' named regions (None: no batch read yet)
    }


def load_monitor_state(monitor: Any, state: Mapping[str, Any]) -> None:
    """Put a checkpointed ``state`` back into an ``ExplainabilityMonitor``, reconciled with its settings."""
    restored = restore(state, state_settings(monitor), monitor.name, monitor._warn_once)
    monitor.held_out = HeldOut(restored.samples, strict=monitor.on_error == "raise")
    if monitor.regions is None:  # the held-out set's regions, until a batch names them
        monitor.regions = state.get("regions")
    monitor.last_maps, monitor.history = restored.last_maps, restored.history
    monitor._explained_epochs = restored.explained_epochs
    monitor._failed = set()  # tried again after a resume
    monitor.alerts.load_state_dict(state.get("alerts", {}))
    monitor._sanity_reference = restored.sanity_reference  # the first pass's maps: kept
    if monitor.sanity_scores is not None:
        monitor.sanity_scores.restore(monitor._sanity_reference)


def restore(
    state: Mapping[str, Any], settings: Mapping[str, Any], name: str, warn: Callable[[str, str], None]
) -> Restored:
    """The checkpointed ``state`` reconciled with the monitor's current ``settings``, each change with a warning.

    Another ``num_samples`` or held-out source: the held-out set is collected again and stability restarts. An
    explainer whose options changed: its stability and history restart. A metric whose options changed: its history
    restarts. Explainers disabled before the checkpoint are tried again (the caller clears them).
    """
    saved = state.get("settings", settings)  # a state from before settings were recorded: trusted as it is
    samples, last_maps = dict(state.get("samples", {})), dict(state.get("last_maps", {}))
    history = [dict(row) for row in state.get("history", [])]
    now = "the dataloader" if settings["own_dataloader"] else "validation"
    if (saved["num_samples"], saved["own_dataloader"]) != (settings["num_samples"], settings["own_dataloader"]):
        was = "a dataloader" if saved["own_dataloader"] else "validation batches"
        warn(
            "resume/samples",
            f"the checkpoint's held-out set was {saved['num_samples']} samples from {was}; collecting "
            f"{settings['num_samples']} from {now} again, and stability restarts",
        )
        samples, last_maps = {}, {}
    changed = _changed(saved["explainers"], settings["explainers"])
    changed_metrics = _changed(saved["metrics"], settings["metrics"])
    if changed or changed_metrics:
        warn(
            "resume/options",
            f"options changed since the checkpoint for explainers {changed} and metrics {changed_metrics}: "
            "their stability and history restart",
        )
        prefixes = tuple(f"{name}/{explainer}/" for explainer in changed)
        suffixes = tuple(f"/{metric}" for metric in changed_metrics)
        history = [
            {k: v for k, v in row.items() if not (k.startswith(prefixes) or k.endswith(suffixes))} for row in history
        ]
        last_maps = {explainer: m for explainer, m in last_maps.items() if explainer not in changed}
    added = sorted(set(settings["explainers"]) - set(saved["explainers"]))
    removed = sorted(set(saved["explainers"]) - set(settings["explainers"]))
    if added or removed:
        warn(
            "resume/explainers",
            f"explainers changed since the checkpoint: added {added} (no history yet), removed {removed} (their "
            "history stays in `history`); the others keep theirs",
        )
        last_maps = {explainer: m for explainer, m in last_maps.items() if explainer in settings["explainers"]}
    failed = sorted(state.get("failed", []))
    if failed:
        warn("resume/failed", f"explainers {failed} were disabled before the checkpoint; trying them again")
    sanity_reference = dict(state.get("sanity_reference", {}))
    return Restored(samples, last_maps, history, int(state.get("explained_epochs", 0)), sanity_reference)


def _changed(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Names in both whose options differ."""
    return [key for key in current if key in saved and dict(saved[key]) != dict(current[key])]


def unclaimed_state(
    checkpoint: Mapping[str, Any], state_key: str, prefix: str, claimed: set[str]
) -> tuple[str | None, str | None]:
    """The checkpoint's monitor state to restore when none is saved under ``state_key``, and what to warn.

    Only states no monitor of the Trainer claims count; the only one is restored (its settings differ), with none
    or several the monitor starts afresh. ``(None, None)``: the state is under ``state_key`` (Lightning restores it).
    """
    states = checkpoint.get("callbacks", {})
    if state_key in states:
        return None, None
    orphans = [key for key in states if key.startswith(prefix) and key not in claimed]
    if len(orphans) == 1:
        return orphans[0], f"restoring the monitor state saved as {orphans[0]!r} (other settings)"
    found = f"{len(orphans)} unclaimed monitor states" if orphans else "no monitor state"
    return None, f"the checkpoint holds {found} for this monitor: it starts afresh"
