"""On a tiny ViT that has learnt the synthetic shapes: explainers beat random maps; metrics leave the model as found.

The checks use the metrics that separate explainers from random maps on this data: the pointing game, relevance
mass, and deletion with the mean baseline. Deletion with the blur baseline barely does (a blurred shape stays
recognisable). Maps of the wrong class are no test here: each image holds one object, so every class's evidence
is on it (rollout and raw attention do not even depend on the class).

Margins come from measurements: the gap to the best of three random maps on five trained fixtures (training seeds
0-3 with two threads, seed 0 with one; 450-1100 steps to the target accuracy). Each margin is at most about half
the smallest gap seen (in the comments); random maps fall short of the best of three by 0 to 0.14 (pointing
game), 0 to 0.005 (relevance mass) and 0 to 0.03 (deletion), and test_random_maps_fail_the_check holds them to it.
"""

import pytest
import torch

import lightning_vitx.explainers as X
import lightning_vitx.metrics as M

# metric name -> (registry name, options, +1 if higher is better else -1)
CHECKS = {
    "pointing_game": ("pointing_game", {}, +1),
    "relevance_mass": ("relevance_mass", {}, +1),
    "deletion_mean": ("deletion", {"baseline": "mean"}, -1),
}
# explainer -> the least gap to the best random map each check asks for (smallest gap measured in the comment)
MARGINS = {
    # attnlrp (defaults: attnlrp rule, gamma 0.25): measured on two fixtures only (seeds 0 and 1, one thread)
    "attnlrp": {"pointing_game": 0.3, "relevance_mass": 0.2, "deletion_mean": 0.2},  # .70 .43 .40
    "generic_attention": {"pointing_game": 0.3, "relevance_mass": 0.25, "deletion_mean": 0.07},  # .71 .50 .15
    "gmar": {"pointing_game": 0.3, "relevance_mass": 0.05, "deletion_mean": 0.07},  # .71 .11 .15
    # legrad (pool "mean"): measured on two fixtures only (seeds 0 and 1, one thread); .51 .19 .21 and .44 .14 .27
    "legrad": {"pointing_game": 0.3, "relevance_mass": 0.1, "deletion_mean": 0.07},  # .44 .14 .21
    # lrp: measured on two fixtures only (seeds 0 and 1, two threads)
    "lrp": {"pointing_game": 0.3, "relevance_mass": 0.1, "deletion_mean": 0.05},  # .62 .22 .11
    # partial_lrp: measured on two fixtures only (seeds 0 and 1, two threads)
    "partial_lrp": {"pointing_game": 0.3, "relevance_mass": 0.2, "deletion_mean": 0.07},  # .60 .40 .15
    # patch_interaction: measured on two fixtures only (seeds 0 and 1, one thread)
    "patch_interaction": {"pointing_game": 0.3, "relevance_mass": 0.15, "deletion_mean": 0.07},  # .62 .31 .19
    "raw_attention": {"pointing_game": 0.3, "relevance_mass": 0.18, "deletion_mean": 0.07},  # .67 .36 .16
    "rollout": {"pointing_game": 0.3, "relevance_mass": 0.05, "deletion_mean": 0.07},  # .72 .11 .16
    # tokentm: measured on two fixtures only (seeds 0 and 1, one thread)
    "tokentm": {"pointing_game": 0.3, "relevance_mass": 0.2, "deletion_mean": 0.07},  # .71 .47 .32
    # transformer_attribution: measured on two fixtures only (seeds 0 and 1, two threads)
    "transformer_attribution": {"pointing_game": 0.3, "relevance_mass": 0.25, "deletion_mean": 0.07},  # .72 .54 .18
}
# Explainers that do not separate from random maps on this model, with the numbers: no margin would be honest.
NOT_SEPARATED = {
    # Grad-CAM on the last block's attention of a 4-block ViT: gaps over the five fixtures span -0.03..+0.40
    # (pointing game), -0.01..+0.20 (relevance mass), -0.04..+0.05 (deletion, mean baseline). Near random on
    # small ViTs, as in Chefer et al. 2021's perturbation tables; its rule is checked on hand-computed cases.
    "gradcam": "last-block Grad-CAM is near random on this model (see the comment above)",
}
# layernorm_stats, rule "final" (seeds 0 and 1, one thread): smallest gaps .70 .51 .28
MARGINS["layernorm_stats"] = {"pointing_game": 0.3, "relevance_mass": 0.25, "deletion_mean": 0.07}


def score(check, model, images, maps, labels, masks):
    name, options, _ = CHECKS[check]
    metric = M.create(name, **options)
    metric.update(model, images, maps, labels, masks)
    return float(metric.compute()["score"])


def random_maps(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def explained(shapes_model):
    """Every explainer's maps of the labelled class, and each check's best score over three random maps."""
    model, images, labels, masks = shapes_model
    maps = X.create_many(X.available(), model)(images, labels)
    randoms = [random_maps(maps["rollout"].shape, seed) for seed in range(3)]
    best_random = {
        check: max(sign * score(check, model, images, r, labels, masks) for r in randoms)
        for check, (_, _, sign) in CHECKS.items()
    }
    return maps, best_random


def gaps(maps, shapes_model, best_random):
    """Per check, how much better than the best random map ``maps`` score (positive: better)."""
    model, images, labels, masks = shapes_model
    return {
        check: sign * score(check, model, images, maps, labels, masks) - best_random[check]
        for check, (_, _, sign) in CHECKS.items()
    }


def test_every_explainer_has_margins_or_a_reason():
    missing = set(X.available()) - set(MARGINS) - set(NOT_SEPARATED)
    assert not missing, f"measure the gaps of {sorted(missing)} on several fixture seeds; add margins or a reason"


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_explainers_beat_random_maps(name, shapes_model, explained):
    maps, best_random = explained
    measured = gaps(maps[name], shapes_model, best_random)
    for check, margin in MARGINS[name].items():
        assert measured[check] > margin, f"{name} {check}: {measured[check]:+.3f} over random, expected > {margin}"


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_random_maps_fail_the_check(seed, shapes_model, explained):
    maps, best_random = explained
    measured = gaps(random_maps(maps["rollout"].shape, seed), shapes_model, best_random)
    for check in CHECKS:
        assert measured[check] <= min(margins[check] for margins in MARGINS.values()), (check, measured[check])


def test_metrics_leave_the_model_as_found_and_work_under_inference_mode(shapes_model, explained):
    model, images, labels, masks = shapes_model
    maps = explained[0]["rollout"]
    model.train()
    rng = torch.get_rng_state()
    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]

    def scores(name, images, maps):
        metric = M.create(name)
        metric.update(model, images, maps, labels[:8], masks[:8])
        return metric.compute()["score"]

    try:
        expected = {name: scores(name, images[:8], maps[:8]) for name in M.available()}
        assert model.training and all(m.training for m in model.modules())
        for grad, p in zip(grads, model.parameters(), strict=True):
            assert (grad is None and p.grad is None) or torch.equal(grad, p.grad)
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(p, q) for p, q in zip(params, model.parameters(), strict=True))
        with torch.inference_mode():
            for name in M.available():
                torch.testing.assert_close(scores(name, images[:8].clone(), maps[:8]), expected[name])
    finally:
        model.eval()


# The trained tiny Swin (tests/conftest.py's shapes_swin): the readouts that take Swin. Margins as above, from the
# gaps measured on the trained Swins of seeds 0-3 (550-800 steps, each trained on one thread in its own process, so
# a seed's run is the same every time); smallest gap over the four in the comment. Margins are about 0.4 of it, and
# above the best random maps reached over the best of three (-0.05..+0.07 pointing game, -0.003..+0.001 relevance
# mass, -0.02..+0.02 deletion); a check left out of an explainer's row did not separate (smallest gap in brackets).
SWIN_MARGINS: dict[str, dict[str, float]] = {
    "attnlrp": {"pointing_game": 0.17, "relevance_mass": 0.07, "deletion_mean": 0.04},  # .43 .18 .11
    "generic_attention": {"pointing_game": 0.3, "deletion_mean": 0.03},  # .75 (.009) .064
    "gmar": {"pointing_game": 0.23, "relevance_mass": 0.05, "deletion_mean": 0.03},  # .58 .12 .059
    "gradcam": {"relevance_mass": 0.04},  # (-.021) .094 (-.126): last-block Grad-CAM on the 4x4 last stage
    "layernorm_stats": {"pointing_game": 0.22},  # .55 (.008) (-.031)
    "lrp": {"pointing_game": 0.12, "relevance_mass": 0.075},  # .30 .19 (-.006)
    "partial_lrp": {"relevance_mass": 0.06},  # (.073) .15 (.035)
    "patch_interaction": {"pointing_game": 0.22, "relevance_mass": 0.07, "deletion_mean": 0.03},  # .56 .17 .057
    "raw_attention": {"relevance_mass": 0.05},  # (.062) .135 (.049)
    "rollout": {"pointing_game": 0.23, "relevance_mass": 0.05, "deletion_mean": 0.03},  # .58 .12 .058
    "transformer_attribution": {"pointing_game": 0.28, "deletion_mean": 0.03},  # .70 (-.002) .062
}
SWIN_NOT_SEPARATED = {
    "legrad": "near random on this Swin: it reads the last stage's blocks only (the head's width: a 4x4 grid spread "
    "to 14x14); gaps +.125/+.083 (pointing game), +.061/+.019 (relevance mass), +.057/+.001 (deletion) on seeds 0, 1",
    "tokentm": "below random on this Swin: gaps -0.125..+0.188 (pointing game), -0.003..-0.002 (relevance mass), "
    "-0.295..-0.114 (deletion) on seeds 0-3; see issue 10's note",
}


@pytest.fixture(scope="module")
def explained_swin(shapes_swin):
    model, images, labels, masks = shapes_swin
    names = [name for name in X.available() if "swin" in X.get_info(name).families]
    maps = X.create_many(names, model)(images, labels)
    randoms = [random_maps(maps["rollout"].shape, seed) for seed in range(3)]
    best_random = {
        check: max(sign * score(check, model, images, r, labels, masks) for r in randoms)
        for check, (_, _, sign) in CHECKS.items()
    }
    return maps, best_random


def test_every_swin_explainer_has_margins_or_a_reason():
    names = {name for name in X.available() if "swin" in X.get_info(name).families}
    missing = names - set(SWIN_MARGINS) - set(SWIN_NOT_SEPARATED)
    assert not missing, f"measure the gaps of {sorted(missing)} on the trained Swin; add margins or a reason"


@pytest.mark.parametrize("name", sorted(SWIN_MARGINS))
def test_explainers_beat_random_maps_on_the_trained_swin(name, shapes_swin, explained_swin):
    maps, best_random = explained_swin
    measured = gaps(maps[name], shapes_swin, best_random)
    for check, margin in SWIN_MARGINS[name].items():
        assert measured[check] > margin, f"swin {name} {check}: {measured[check]:+.3f} over random, expected > {margin}"


def test_layernorm_stats_against_the_papers_claim_on_the_trained_swin(shapes_swin, explained_swin):
    """The paper's claim, as far as this model bears it out (seeds 0 / 1 in the comments; the README's table).

    Since the avg-pool readout's constant identity path is dropped (propagate_additive, drop_identity), seed 0
    (96 held-out images, labelled class): layernorm_stats puts .420 of its relevance on the object, its base
    generic_attention .413, rollout .225: the LayerNorm weighting moves its base by less than .01, so the claim that
    it helps is not borne out, but both beat rollout by far (with the constant, all three looked worse than rollout:
    .107, .098, .203). No corner artifact appears on this model: rollout, generic_attention and layernorm_stats put
    .124, .103 and .105 of their relevance in the corners, under a uniform map's .184; so "less in the corners"
    cannot show here (benchmarks/corners.py).
    """
    from lightning_vitx.analysis import corner_region, corner_share

    model, images, labels, masks = shapes_swin
    maps = explained_swin[0]
    mass = {name: score("relevance_mass", model, images, maps[name], labels, masks) for name in maps}
    assert mass["layernorm_stats"] > mass["rollout"] + 0.1, mass
    assert abs(mass["layernorm_stats"] - mass["generic_attention"]) < 0.05, mass
    uniform = float(corner_region(tuple(maps["rollout"].shape[-2:])).float().mean())
    for name in ("rollout", "generic_attention"):
        assert float(corner_share(maps[name]).nanmean()) < uniform + 0.03, name
