"""Composites (``composites.py``): which rule goes on which module, the one support check, and rules as data.

A composite covers a model when every module has a rule; where it does not, creating an LRP explainer names the
module and an explainer that works on that model instead, and that explainer runs.
"""

import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

import lightning_vitx.explainers as X
from lightning_vitx.explainers.lrp import Composite, Entry, explicit, modified_backward
from lightning_vitx.explainers.lrp.composites import classifier_heads
from lightning_vitx.explainers.lrp.passes import check_pixel_rule
from lightning_vitx.explainers.lrp.rules import EndsRule, LinearRule, ResidualRule

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import golden_maps  # noqa: E402

COMPOSITES = {
    "chefer": explicit("chefer"),
    "baseline": explicit("baseline"),
    "attnlrp": modified_backward("attnlrp", 0.25, 0.25),
    "cp": modified_backward("cp", 0.0, 0.0),
}
LRP_EXPLAINERS = {
    "transformer_attribution": "chefer",
    "lrp": "baseline",
    "partial_lrp": "baseline",
    "attnlrp": "attnlrp",
}
VIT = golden_maps.VIT  # 32 px images in 8 px patches, width 16, two blocks


def build(case):
    """The golden maps' models (vit, registers, deit_distilled, avgpool, swin) and a layer-scale ViT."""
    if case == "layer_scale":
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, init_values=0.1, **VIT).eval()
    return golden_maps.build(case)


SUPPORTED = [*golden_maps.CASES, "layer_scale"]


# --- every module of the supported models has a rule --------------------------------------------------------------


@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize("case", SUPPORTED)
def test_every_module_of_the_supported_models_has_a_rule(case, composite):
    model = build(case)
    rules = COMPOSITES[composite]
    assert rules.refusal(model) is None
    rules.check(model, "transformer_attribution")  # no error
    claimed = rules.claimed(model)
    for path, module in model.named_modules():
        assert id(module) in claimed or type(module) in rules.entries, path


@pytest.mark.parametrize("case", SUPPORTED)
def test_the_lrp_explainers_run_on_the_supported_models(case):
    model = build(case)
    images = golden_maps.images()
    grid = (8, 8) if case == "swin" else (4, 4)
    for name in LRP_EXPLAINERS:
        explainer = X.create(name, model)
        maps = explainer(images, target=1)
        assert maps.shape == (2, *grid) and bool(torch.isfinite(maps).all()) and bool(maps.abs().sum() > 0), name
    assert check_pixel_rule(model, "lrp") is model.patch_embed.proj  # the z^B rule covers the patch embedding


def test_classifier_heads_name_the_rows_they_read():
    vit, deit, avgpool, swin = (build(case) for case in ("vit", "deit_distilled", "avgpool", "swin"))
    assert classifier_heads(vit) == [(vit.head, 0)]
    assert classifier_heads(deit) == [(deit.head, 0), (deit.head_dist, 1)]
    assert classifier_heads(avgpool) == [(avgpool.head, None)]
    assert classifier_heads(swin) == [(swin.head.fc, None)]


def test_the_two_explicit_rule_sets_differ_in_the_linear_and_residual_rules_only():
    chefer, baseline = explicit("chefer"), explicit("baseline")
    assert chefer is explicit("chefer")  # one composite per rule set
    assert chefer.entries.keys() == baseline.entries.keys()
    differing = {kind for kind in chefer.entries if chefer.entries[kind] != baseline.entries[kind]}
    assert differing == {nn.Linear, Block, SwinTransformerBlock, VisionTransformer, VisionTransformerDistilled}
    assert (chefer.entries[nn.Linear].rule, baseline.entries[nn.Linear].rule) == (LinearRule(True), LinearRule(False))
    for block in (Block, SwinTransformerBlock):
        assert chefer.entries[block].rule == ResidualRule(renormalise=True)
        assert baseline.entries[block].rule == ResidualRule(renormalise=False)
    # the readouts differ by the residual rule they split the position embedding's sum (and DeiT's heads) with
    for rules, residual in ((chefer, ResidualRule(True)), (baseline, ResidualRule(False))):
        assert rules.entries[VisionTransformer].rule == EndsRule(position=residual)
        assert rules.entries[VisionTransformerDistilled].rule == EndsRule(average=residual, position=residual)


def test_rule_lookup_names_a_module_without_a_rule():
    model = build("vit")
    assert explicit("chefer").rule(model.blocks[0].mlp.fc1) == LinearRule(joint=True)
    with pytest.raises(
        TypeError, match=r"the 'baseline' LRP rules have no rule for a torch\.nn\.modules\.conv\.Conv1d"
    ):
        explicit("baseline").rule(nn.Conv1d(1, 1, 1))


# --- refused models: the message names the module, and the explainer it suggests works ------------------------------


def gated(mlp_layer, act_layer=nn.GELU):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, mlp_layer=mlp_layer, act_layer=act_layer, **VIT)


def swin_with_absolute_position():
    model = golden_maps.build("swin")
    model.absolute_pos_embed = nn.Parameter(torch.zeros(1, 8, 8, 16))  # timm 1.x builds no such embedding itself
    return model


EXPLICIT = ("transformer_attribution", "lrp", "partial_lrp")
ALL = (*EXPLICIT, "attnlrp")
# case -> (the model, the LRP explainers that refuse it, where and why, as a regex)
REFUSED = {
    "swiglu_packed": (
        lambda: gated(timm.layers.SwiGLUPacked, nn.SiLU),
        ALL,
        r"'blocks\.0\.mlp' is a timm\.layers\.mlp\.GluMlp, which has no rule",
    ),
    "glu_mlp": (
        lambda: gated(timm.layers.GluMlp, nn.Sigmoid),
        ALL,
        r"'blocks\.0\.mlp' is a timm\.layers\.mlp\.GluMlp, which has no rule",
    ),
    "swiglu": (
        lambda: gated(timm.layers.SwiGLU),
        ALL,
        r"'blocks\.0\.mlp' is a timm\.layers\.mlp\.SwiGLU, which has no rule",
    ),
    "headless": (
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**VIT, "num_classes": 0}),
        EXPLICIT,  # attnlrp explains a headless model's callable target (tests/explainers/test_callable_targets.py)
        r"the model \(VisionTransformer\): needs a Linear classifier head, got Identity; "
        r"create it with num_classes > 0",
    ),
    "post_norm": (
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, block_fn=ResPostBlock, **VIT),
        EXPLICIT,  # attnlrp covers it (test_post_norm_family.py)
        r"'blocks\.0' is a timm\.models\.vision_transformer\.ResPostBlock, which has no rule",
    ),
    "rms_norm": (
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, norm_layer=timm.layers.RmsNorm, **VIT),
        ALL,
        r"'blocks\.0\.norm1' is a timm\.layers\.norm\.RmsNorm, which has no rule",
    ),
    "prefix_pool": (  # avg-pool heads are explained, but not one that also averages the class token
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, global_pool="avg", pool_include_prefix=True, **VIT
        ),
        EXPLICIT,
        r"the model \(VisionTransformer\): an avg-pool head that averages the prefix tokens has no rule: create it "
        r"with pool_include_prefix=False",
    ),
    "swin_absolute_position": (
        swin_with_absolute_position,
        EXPLICIT,
        r"the model \(SwinTransformer\): Swin's absolute position embedding has no rule",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refusal_names_the_module_and_an_explainer_that_works(case):
    build_model, refusing, reason = REFUSED[case]
    model = build_model().eval()
    suggested = set()
    for name in ALL:
        if name not in refusing:
            X.create(name, model)  # covered
            continue
        rules = LRP_EXPLAINERS[name]
        message = rf"^{name} \({rules} rules\) does not cover this model: {reason}; use '(\w+)' for this model$"
        with pytest.raises(TypeError, match=message) as error:
            X.create(name, model)
        suggested.add(re.match(message, str(error.value)).group(1))
    images = golden_maps.images()
    grid = (8, 8) if case.startswith("swin") else (4, 4)
    for alternative in suggested:
        assert alternative not in refusing
        maps = X.create(alternative, model)(images)
        assert maps.shape == (2, *grid) and bool(torch.isfinite(maps).all()), alternative


def test_attention_pooling_has_no_rule_in_either_engine():
    """``global_pool='map'`` (an adapter refuses it before the composites are asked): both engines' rules say where."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="map", **VIT)
    assert explicit("chefer").refusal(model) == (
        "the model (VisionTransformer): global_pool='map' has no rule (supported: 'token', 'avg')"
    )
    assert modified_backward("attnlrp", 0.25, 0.25).refusal(model) == (
        "'attn_pool' is a timm.layers.attention_pool.AttentionPoolLatent, which has no rule"
    )


# --- rules are data: a composite built from another's entries, one entry changed ----------------------------------


def test_one_entry_changed_changes_the_map_and_changed_back_restores_it(tiny_vit, tiny_images):
    model, images, target = tiny_vit(), tiny_images(), torch.tensor([0, 3, 4])
    stock = X.create("transformer_attribution", model)
    assert stock.composite is explicit("chefer")
    expected, expected_pixels = stock(images, target), stock.pixel_relevance(images, target)
    entries = explicit("chefer").entries
    per_term = Composite("chefer, per-term Linear", {**entries, nn.Linear: Entry(LinearRule(joint=False))})
    per_term.check(model, "transformer_attribution")  # still covers the model
    explainer = X.create("transformer_attribution", model)
    explainer.composite = per_term
    assert not torch.allclose(explainer(images, target), expected, rtol=1e-2, atol=0)
    assert not torch.allclose(explainer.pixel_relevance(images, target), expected_pixels, rtol=1e-2, atol=0)
    explainer.composite = Composite("chefer again", {**per_term.entries, nn.Linear: entries[nn.Linear]})
    assert torch.equal(explainer(images, target), expected)
    assert torch.equal(explainer.pixel_relevance(images, target), expected_pixels)
    assert explicit("chefer").rule(model.head) == LinearRule(joint=True)  # the stock composite is untouched
    assert torch.equal(X.create("transformer_attribution", model)(images, target), expected)
