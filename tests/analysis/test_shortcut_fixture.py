"""Explanations catch a shortcut: on the ViT that learnt a class-coded watermark (the ``shapes_shortcut`` fixture),
the relevance sits on the watermark; on the ViT that learnt the shapes (``shapes_model``) it sits on the object.

The region scores are the relevance mass (``metrics.functional.relevance_mass``) with each region as the mask, means
over the 96 held-out images. The watermark covers 1/64 of the image: a random map puts ~0.016 of its mass there.
Measured (seed 0): the shortcut model on watermarked images puts 0.41 (generic_attention), 0.51 (attnlrp) and 0.36
(transformer_attribution) on the watermark and 0.01-0.06 on the object; the clean model on the same images puts
0.06-0.07 on the watermark and 0.45-0.49 on the object.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.callbacks.alerts import AlertRules
from lightning_vitx.data.shapes import shortcut_mask
from lightning_vitx.metrics.functional import relevance_mass

pytestmark = pytest.mark.filterwarnings("ignore:relevance_mass.*all zero")  # a blank map scores NaN, averaged out

EXPLAINERS = ["generic_attention", "attnlrp", "transformer_attribution"]  # gradient-weighted attention and LRP
DEMO = Path(__file__).parents[2] / "examples" / "shapes.py"


def masses(model, images, labels, regions) -> dict[str, float]:
    return {
        name: {region: float(relevance_mass(maps, mask).nanmean()) for region, mask in regions.items()}
        for name in EXPLAINERS
        for maps in [X.create(name, model)(images, labels)]
    }


@pytest.fixture(scope="module")
def shortcut_masses(shapes_shortcut):
    """Masses per explainer and region of the shortcut model on watermarked held-out images."""
    model, images, labels, regions = shapes_shortcut
    return masses(model, images, labels, regions)


@pytest.fixture(scope="module")
def clean_masses(shapes_model, shapes_shortcut):
    """The clean model's masses on the same watermarked images, and on its own un-watermarked held-out images with
    the watermark's place for the label as the ``shortcut`` region (no watermark drawn there)."""
    model, images, labels, masks = shapes_model
    places = torch.stack([shortcut_mask(int(label), images.shape[-1]) for label in labels])
    _, cued, cued_labels, regions = shapes_shortcut
    return {
        "cued": masses(model, cued, cued_labels, regions),
        "uncued": masses(model, images, labels, {"object": masks, "shortcut": places}),
    }


@pytest.mark.parametrize("name", EXPLAINERS)
def test_the_shortcut_model_puts_its_relevance_on_the_watermark(name, shortcut_masses):
    mass = shortcut_masses[name]
    assert mass["shortcut"] > 3 * mass["object"], mass
    assert mass["shortcut"] > 10 / 64, mass  # ten times a random map's share of the watermark


@pytest.mark.parametrize("name", EXPLAINERS)
def test_the_clean_model_puts_its_relevance_on_the_object(name, clean_masses):
    for images, mass in clean_masses.items():
        assert mass[name]["object"] > 3 * mass[name]["shortcut"], (images, mass[name])


def load_demo():
    spec = importlib.util.spec_from_file_location("shapes_demo", DEMO)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_demo_alert_fires_on_the_shortcut_model_only(shortcut_masses, clean_masses):
    """The demo's ``--shortcut`` rules (examples/shapes.py), read on one pass of each model's scores."""
    demo = load_demo()
    rules = demo.shortcut_alerts("explain", EXPLAINERS)
    assert len(rules) == len(EXPLAINERS)

    def fired(mass: dict[str, dict[str, float]]) -> int:
        scores = {f"explain/{name}/relevance_mass/{region}": v for name in mass for region, v in mass[name].items()}
        return len(AlertRules(rules, lambda key: True).update(scores, epoch=0))

    assert fired(shortcut_masses) == len(EXPLAINERS)
    assert fired(clean_masses["cued"]) == 0 and fired(clean_masses["uncued"]) == 0
