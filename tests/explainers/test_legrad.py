"""LeGrad: a dense per-image oracle written out here, the model's own head, Swin's blocks, and torchcam's LeGrad."""

import pytest
import timm
import torch
from torch import nn

import lightning_vitx.explainers as X

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2, "depth": 2, "num_classes": 5}
CASES = {
    "vit": ("vit_tiny_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}),
    "avgpool": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}),
    "avgpool_fc_norm": ("vit_tiny_patch16_224", {"global_pool": "avg"}),
}


def tiny(case: str, seed: int = 0) -> nn.Module:
    name, kwargs = CASES[case]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **TINY, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.5, generator=generator)
        model.head.weight.normal_(0.0, 0.5, generator=generator)
    return model


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def oracle(model, image: torch.Tensor, target: int, pool: str, first: int = 0) -> torch.Tensor:
    """LeGrad on one image, by hand: each block's attention computed explicitly, its score from its own tokens."""
    prefix = model.num_prefix_tokens
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))
    per_block = []
    for index, block in enumerate(model.blocks):
        x = x.detach().requires_grad_(True)
        attn = block.attn
        tokens, width = x.shape[1], x.shape[2]
        q, k, v = attn.qkv(block.norm1(x)).reshape(1, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        probabilities = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [1, heads, N, N]
        mixed = (probabilities @ v).transpose(1, 2).reshape(1, tokens, width)
        x = x + block.ls1(attn.proj(mixed))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        if pool == "mean":  # every token's mean, normed, through the head
            pooled = model.norm(x.mean(dim=1))
        elif model.global_pool == "avg":  # the model's own: normed tokens, the patches' mean
            pooled = model.norm(x)[:, prefix:].mean(dim=1)
        else:
            pooled = model.norm(x)[:, 0]
        score = model.head(model.fc_norm(pooled))[0, target]
        (grad,) = torch.autograd.grad(score, probabilities)
        if index >= first:
            per_block.append(grad.clamp(min=0).mean(dim=(1, 2))[0, prefix:])
    return torch.stack(per_block).mean(dim=0).reshape(model.patch_embed.grid_size)


@pytest.mark.parametrize("pool", ["mean", "model"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_dense_oracle(case, pool):
    model = tiny(case)
    batch, target = images(), torch.tensor([0, 3, 4])
    maps = X.create("legrad", model, pool=pool)(batch, target)
    expected = torch.stack([oracle(model, batch[i], int(target[i]), pool) for i in range(batch.shape[0])])
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_the_model_pool_runs_the_models_own_head():
    """pool='model' on the last block's tokens is the model's forward; a class-token head reads one query row."""
    model = tiny("vit")
    explainer = X.create("legrad", model, pool="model", start_layer=-1)
    tokens = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(images()))))
    torch.testing.assert_close(explainer.head(tokens), model(images()), rtol=0, atol=1e-6)
    assert explainer.start_layer == 1


def test_start_layer_keeps_the_last_blocks():
    model = tiny("vit")
    batch = images()
    last = X.create("legrad", model, start_layer=-1)(batch, 2)
    expected = torch.stack([oracle(model, image, 2, "mean", first=1) for image in batch])
    torch.testing.assert_close(last, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_swin_uses_its_last_stage(models, make_images):
    model = models["swin"]
    explainer = X.create("legrad", model)
    depths = [len(stage.blocks) for stage in model.layers]
    assert explainer.start_layer == sum(depths[:-1])
    with pytest.raises(ValueError, match=r"only blocks 6\.\. \(its last stage\) have the head's width, got start_l"):
        X.create("legrad", model, start_layer=0)
    maps = explainer(make_images(72, batch=2), 1)
    assert maps.shape == (2, 18, 18) and torch.isfinite(maps).all() and (maps >= 0).all()


def test_options_are_checked():
    model = tiny("vit")
    with pytest.raises(ValueError, match="pool must be one of"):
        X.create("legrad", model, pool="max")
    with pytest.raises(ValueError, match=r"start_layer must be an int in \[-2, 2\)"):
        X.create("legrad", model, start_layer=2)


def test_equals_torchcam_on_a_torchvision_vit_with_the_same_weights():
    """torchcam 0.5.0's LeGrad (all blocks, unnormalised) on torchvision's ViT with the timm ViT's weights."""
    pytest.importorskip("torchcam")
    pytest.importorskip("torchvision")
    from torchcam.methods import LeGrad
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        mlp_ratio=2.0, num_classes=5,
    ).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.5, generator=generator)
        model.head.weight.normal_(0.0, 0.5, generator=generator)
    reference = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    state = {
        "conv_proj": model.patch_embed.proj, "encoder.ln": model.norm, "heads.head": model.head,
    }  # fmt: skip
    weights = {f"{name}.{p}": getattr(module, p) for name, module in state.items() for p in ("weight", "bias")}
    weights |= {"class_token": model.cls_token, "encoder.pos_embedding": model.pos_embed}
    for index, block in enumerate(model.blocks):
        layer = f"encoder.layers.encoder_layer_{index}."
        pairs = {
            "ln_1": block.norm1, "self_attention.out_proj": block.attn.proj, "ln_2": block.norm2,
            "mlp.0": block.mlp.fc1, "mlp.3": block.mlp.fc2,
        }  # fmt: skip
        weights |= {f"{layer}{name}.{p}": getattr(m, p) for name, m in pairs.items() for p in ("weight", "bias")}
        weights[f"{layer}self_attention.in_proj_weight"] = block.attn.qkv.weight  # both pack [q; k; v]
        weights[f"{layer}self_attention.in_proj_bias"] = block.attn.qkv.bias
    reference.load_state_dict({key: value.detach().clone() for key, value in weights.items()}, strict=True)
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reference(batch), model(batch), rtol=0, atol=1e-5)
    target = model(batch).argmax(dim=1)
    with LeGrad(reference, list(reference.encoder.layers)) as extractor:
        expected = extractor(target.tolist(), reference(batch), normalized=False)[0]
    maps = X.create("legrad", model)(batch, target)
    centred = [m.flatten(1) - m.flatten(1).mean(dim=1, keepdim=True) for m in (maps, expected)]
    pearson = torch.nn.functional.cosine_similarity(*centred, dim=1)
    assert pearson.min() >= 0.99, pearson
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
