"""The registry, explainer options, and several explainers from one capture pass."""

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.explainers import ExplainerInfo, register


def test_available_names():
    expected = [
        "attnlrp",
        "generic_attention",
        "gmar",
        "gradcam",
        "layernorm_stats",
        "legrad",
        "lrp",
        "partial_lrp",
        "patch_interaction",
        "raw_attention",
        "rollout",
        "tokentm",
        "transformer_attribution",
    ]
    assert X.available() == expected
    assert {X.get_info(n).needs_gradients for n in ["gradcam", "generic_attention", "gmar"]} == {True}
    assert {X.get_info(n).needs_gradients for n in ["raw_attention", "rollout"]} == {False}


def test_unknown_name_lists_the_choices(models):
    with pytest.raises(ValueError, match=r"unknown explainer 'rolout'; expected one of \['attnlrp', 'generic_"):
        X.create("rolout", models["vit"])


def test_duplicate_registration_raises():
    info = ExplainerInfo("rollout", False, True, ("vit",), "again", "none")
    with pytest.raises(ValueError, match="already registered"):
        register(info)(type("Again", (X.ReadoutExplainer,), {}))


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("rollout", {"head_fusion": "median"}, "head_fusion must be one of"),
        ("rollout", {"discard_ratio": 1.0}, r"discard_ratio must lie in \[0, 1\)"),
        ("rollout", {"start_layer": 12}, r"start_layer must be an int in \[-12, 12\)"),
        ("generic_attention", {"start_layer": 1.5}, "start_layer must be an int"),
        ("gradcam", {"layer": -13}, "layer must be an int"),
        ("gmar", {"norm": "l3"}, "norm must be one of"),
        ("gmar", {"gradient_source": "values"}, "gradient_source must be"),
        ("attnlrp", {"attention_rule": "softmax"}, "attention_rule must be one of"),
    ],
)
def test_bad_options(name, options, message, models):
    with pytest.raises(ValueError, match=message):
        X.create(name, models["vit"], **options)


def test_unknown_option_is_a_type_error(models):
    with pytest.raises(TypeError, match="discard"):
        X.create("raw_attention", models["vit"], discard=0.5)


def test_create_many_shares_one_pass_and_matches_each_alone(models, make_images):
    model = models["registers"]
    images = make_images(224, batch=2)
    options = {
        "raw_attention": {},
        "rollout": {"discard_ratio": 0.5},
        "gradcam": {},
        "generic_attention": {},
        "gmar": {"norm": "l2"},
    }
    group = X.create_many(options, model)
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, i: forwards.append(1))
    try:
        maps = group(images)
    finally:
        handle.remove()
    assert len(forwards) == 1
    assert list(maps) == list(options)
    for name, opts in options.items():
        torch.testing.assert_close(maps[name], X.create(name, model, **opts)(images), rtol=0, atol=0)


def test_create_many_errors(models):
    with pytest.raises(TypeError, match=r"use \['rollout'\]"):
        X.create_many("rollout", models["vit"])
    with pytest.raises(ValueError, match="duplicate explainer names"):
        X.create_many(["rollout", "rollout"], models["vit"])
    with pytest.raises(ValueError, match="at least one explainer"):
        X.create_many([], models["vit"])
    with pytest.raises(ValueError, match="the same model"):
        X.ExplainerGroup({"a": X.create("rollout", models["vit"]), "b": X.create("rollout", models["avgpool"])})


def test_declared_pixel_maps_exist_and_partial_lrp_would_repeat_lrps(models, make_images):
    """``pixel_map`` explainers have ``pixel_relevance``; ``partial_lrp``'s is ``lrp``'s map, so it declares none
    (the monitor drew the same map twice under two names)."""
    declared = {name for name in X.available() if X.get_info(name).pixel_map}
    assert declared == {"lrp", "transformer_attribution", "attnlrp"}
    model, images = models["vit"], make_images(224, batch=2)
    for name in declared:
        assert callable(getattr(X.create(name, model), "pixel_relevance", None)), name
    partial = X.create("partial_lrp", model).pixel_relevance(images, 1)
    torch.testing.assert_close(partial, X.create("lrp", model).pixel_relevance(images, 1), rtol=0, atol=0)
    assert [name for name in X.available() if X.get_info(name).receptive_field_figures] == ["patch_interaction"]
