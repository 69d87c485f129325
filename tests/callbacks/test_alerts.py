"""Alert rules on scripted score sequences: each kind fires exactly when it should, once per crossing."""

from __future__ import annotations

import pytest

from lightning_vitx.callbacks.alerts import AlertRules

KEY = "explain/rollout/relevance_mass"


def fired_at(rule: dict, values: list[float], higher: bool = True) -> list[int]:
    """The passes (indices) at which ``rule`` on ``KEY`` fires for the score sequence ``values``."""
    rules = AlertRules({KEY: rule}, lambda key: higher)
    return [epoch for epoch, value in enumerate(values) if rules.update({KEY: value}, epoch)]


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    [
        ({"below": 0.5}, [0.6, 0.4, 0.3, 0.7, 0.4], [1, 4]),  # once per crossing
        ({"below": 0.5}, [0.5, 0.5], []),  # strict
        ({"above": 0.5}, [0.4, 0.6, 0.9, 0.1, 0.8], [1, 4]),
        ({"below": 0.5, "patience": 3}, [0.4, 0.4, 0.6, 0.4, 0.4, 0.4, 0.4], [5]),
        ({"below": 0.5, "patience": 2}, [0.4, 0.4, 0.4, 0.4, 0.9, 0.1, 0.1], [1, 6]),
    ],
)
def test_thresholds_fire_once_per_crossing_after_their_patience(rule, values, expected):
    assert fired_at(rule, values) == expected


def test_worse_than_best_by_reads_the_direction_of_the_metric():
    rule = {"worse_than_best_by": 0.1}
    # higher is better: the best so far is 0.8 at pass 1; 0.65 is 0.15 worse
    assert fired_at(rule, [0.5, 0.8, 0.75, 0.65, 0.6, 0.9, 0.85, 0.7], higher=True) == [3, 7]
    # lower is better (e.g. deletion): the best is the lowest; 0.45 is 0.15 worse than 0.3
    assert fired_at(rule, [0.5, 0.3, 0.35, 0.45], higher=False) == [3]
    assert fired_at(rule, [0.5], higher=True) == []  # no best before the first pass


def test_missing_and_non_finite_scores_leave_the_state_alone():
    rules = AlertRules({KEY: {"below": 0.5, "patience": 2}}, lambda key: True)
    assert rules.update({KEY: 0.1}, 0) == []
    assert rules.update({}, 1) == [] and rules.update({KEY: float("nan")}, 2) == []
    (alert,) = rules.update({KEY: 0.2}, 3)  # the streak went on across the passes without the key
    assert (alert.key, alert.value, alert.epoch) == (KEY, 0.2, 3)
    assert alert.message() == f"alert: {KEY} = 0.2 at epoch 3, below 0.5 for 2 passes in a row"
    assert rules.fired == 1


def test_the_state_survives_a_checkpoint():
    rules = AlertRules({KEY: {"worse_than_best_by": 0.1, "patience": 2}}, lambda key: True)
    rules.update({KEY: 0.9}, 0)
    rules.update({KEY: 0.7}, 1)
    restored = AlertRules({KEY: {"worse_than_best_by": 0.1, "patience": 2}}, lambda key: True)
    restored.load_state_dict(rules.state_dict())
    (alert,) = restored.update({KEY: 0.7}, 2)
    assert alert.best == 0.9 and restored.fired == 1


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ({"below": 0.1, "above": 0.9}, "exactly one of"),
        ({"under": 0.1}, "exactly one of"),
        ({"below": "low"}, "below must be a finite number"),
        ({"below": 0.1, "patience": 0}, "patience must be an int >= 1"),
        ({"worse_than_best_by": -0.1}, "worse_than_best_by must be >= 0"),
        (0.3, "must be a dict"),
    ],
)
def test_bad_rules_say_what_is_allowed(rule, match):
    with pytest.raises(ValueError, match=match):
        AlertRules({KEY: rule}, lambda key: True)
