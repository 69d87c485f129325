"""Alert rules on the monitor's scores: a key, a threshold or a distance from its best, and a patience.

A rule is a plain dict, so it can come from YAML: exactly one of ``{"below": x}``, ``{"above": x}`` or
``{"worse_than_best_by": d}`` (worse by the metric's direction, ``higher_is_better``), with an optional
``"patience": k`` (the condition must hold on ``k`` explained passes in a row; default 1). A rule fires once when its
condition has held for ``k`` passes, and again only after the condition has been false once: one alert per
crossing, not one per pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Alert", "AlertRule", "AlertRules", "KINDS"]

KINDS = ("below", "above", "worse_than_best_by")


@dataclass(frozen=True)
class AlertRule:
    """One key's rule.

    Example::

        >>> AlertRule.parse("explain/rollout/deletion", {"above": 0.5, "patience": 2})
        AlertRule(key='explain/rollout/deletion', kind='above', threshold=0.5, patience=2)
    """

    key: str
    kind: str
    threshold: float
    patience: int = 1

    @classmethod
    def parse(cls, key: str, rule: Mapping[str, Any]) -> AlertRule:
        """Check and read a rule dict; a ``ValueError`` says what is wrong and what is allowed."""
        if not isinstance(rule, Mapping):
            raise ValueError(f"the alert rule of {key!r} must be a dict such as {{'below': 0.3}}, got {rule!r}")
        kinds = [kind for kind in KINDS if kind in rule]
        unknown = sorted(set(rule) - {*KINDS, "patience"})
        if len(kinds) != 1 or unknown:
            raise ValueError(
                f"the alert rule of {key!r} needs exactly one of {list(KINDS)} and optionally 'patience', got "
                f"{sorted(rule)}"
            )
        threshold, patience = rule[kinds[0]], rule.get("patience", 1)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"the alert rule of {key!r}: {kinds[0]} must be a finite number, got {threshold!r}")
        if kinds[0] == "worse_than_best_by" and threshold < 0:
            raise ValueError(f"the alert rule of {key!r}: worse_than_best_by must be >= 0, got {threshold!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"the alert rule of {key!r}: patience must be an int >= 1, got {patience!r}")
        return cls(key, kinds[0], float(threshold), patience)

    def describe(self) -> str:
        """The rule in words, e.g. ``"below 0.3 for 2 passes in a row"``."""
        text = f"{self.kind.replace('_', ' ')} {self.threshold:g}"
        return text if self.patience == 1 else f"{text} for {self.patience} passes in a row"


@dataclass(frozen=True)
class Alert:
    """A rule that fired: its key, the value that made it fire, the rule, and the explained epoch."""

    key: str
    value: float
    rule: AlertRule
    epoch: int
    best: float | None = None

    def message(self) -> str:
        best = f" (best so far {self.best:.4g})" if self.best is not None else ""
        return f"alert: {self.key} = {self.value:.4g} at epoch {self.epoch}, {self.rule.describe()}{best}"


class AlertRules:
    """The monitor's alert rules and their state across passes (best values, streaks, alerts fired).

    Args:
        rules: ``{score key: rule dict}`` (module docstring).
        higher_is_better: the direction of a score key, for ``worse_than_best_by``.

    Example::

        >>> key = "explain/rollout/relevance_mass"
        >>> rules = AlertRules({key: {"below": 0.3, "patience": 2}}, lambda key: True)
        >>> [len(rules.update({key: v}, epoch)) for epoch, v in enumerate([0.2, 0.2, 0.2, 0.5, 0.1, 0.1])]
        [0, 1, 0, 0, 0, 1]
        >>> rules.fired
        2
    """

    def __init__(self, rules: Mapping[str, Mapping[str, Any]], higher_is_better: Callable[[str], bool]) -> None:
        if not isinstance(rules, Mapping):
            raise ValueError(f"alerts must be a dict from score keys to rules, got {type(rules).__name__}")
        self.rules = [AlertRule.parse(key, rule) for key, rule in rules.items()]
        self.higher_is_better = higher_is_better
        self.best: dict[str, float] = {}
        self.streaks: dict[str, int] = {rule.key: 0 for rule in self.rules}
        self.fired = 0

    def update(self, scores: Mapping[str, float], epoch: int) -> list[Alert]:
        """Read one pass's scores; return the alerts that fire on it (a key absent from the pass keeps its state)."""
        alerts = []
        for rule in self.rules:
            value = scores.get(rule.key)
            if value is None or not math.isfinite(value):
                continue
            higher = self.higher_is_better(rule.key)
            best = self.best.get(rule.key)
            holds = self._holds(rule, value, best, higher)
            self.streaks[rule.key] = self.streaks[rule.key] + 1 if holds else 0
            if self.streaks[rule.key] == rule.patience:
                alerts.append(Alert(rule.key, value, rule, epoch, best if rule.kind == "worse_than_best_by" else None))
            if best is None or (value > best if higher else value < best):
                self.best[rule.key] = value
        self.fired += len(alerts)
        return alerts

    @staticmethod
    def _holds(rule: AlertRule, value: float, best: float | None, higher: bool) -> bool:
        if rule.kind == "below":
            return value < rule.threshold
        if rule.kind == "above":
            return value > rule.threshold
        if best is None:
            return False
        return (best - value if higher else value - best) > rule.threshold

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "streaks": dict(self.streaks), "fired": self.fired}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = {key: float(value) for key, value in state.get("best", {}).items()}
        self.streaks.update({key: int(value) for key, value in state.get("streaks", {}).items() if key in self.streaks})
        self.fired = int(state.get("fired", 0))
