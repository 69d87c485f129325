"""A family added as one rule-map line: post-norm ViT blocks (timm's ``ResPostBlock``) under AttnLRP / CP-LRP.

``composites.modified_backward`` gives ``ResPostBlock`` the plain gradient (its two residual sums); every operation
inside it (Linear, LayerNorm, attention, MLP) already has its rule, whatever the order. The adapters needed nothing.
"""

import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock

import lightning_vitx.explainers as X


@pytest.fixture(scope="module")
def post_norm_vit():
    torch.manual_seed(0)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=5)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, block_fn=ResPostBlock, **kwargs).eval()


def test_cp_without_biases_conserves_the_logit_on_post_norm_blocks(post_norm_vit):
    """Every additive parameter at 0, gamma 0: the pixels' relevance sums to the target logit (each rule conserves).

    Fails if any LayerNorm or attention module of the post-norm block took the plain gradient instead of its rule.
    """
    model = post_norm_vit
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "pos_embed"):
                param.zero_()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 0, 4])
    maps = X.create("attnlrp", model, attention_rule="cp", gamma=0, conv_gamma=0)(images, target)
    logits = model(images).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum(dim=(1, 2)), logits, rtol=1e-4, atol=1e-5)


def test_attnlrp_runs_on_post_norm_blocks_and_the_explicit_rules_still_refuse(post_norm_vit):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = X.create("attnlrp", post_norm_vit)(images, target=1)
    assert maps.shape == (2, 4, 4) and bool(torch.isfinite(maps).all()) and bool(maps.abs().sum() > 0)
    with pytest.raises(TypeError, match=r"'blocks\.0' is a timm\.models\.vision_transformer\.ResPostBlock"):
        X.create("transformer_attribution", post_norm_vit)
