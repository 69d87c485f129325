"""Which models the LRP family's rules cover: the one place that answers, for both engines.

``check_supported`` (the explicit engine: ``lrp``, ``partial_lrp``, ``transformer_attribution``) returns the
classifier heads and the token rows they read; ``check_pixel_rule`` the patch convolution the pixel maps need;
``check_backward_supported`` (the modified backward: ``attnlrp``). Each raises a ``TypeError`` that names the
module without a rule and an explainer that works on the model.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from lightning_vitx.adapters import detect
from lightning_vitx.explainers.lrp.relevance import Head

__all__ = ["check_backward_supported", "check_pixel_rule", "check_supported"]


def _is_swin(model: Any) -> bool:
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(model, SwinTransformer)


def check_supported(model: Any, name: str) -> list[Head]:
    """Raise a ``TypeError`` for what the rules don't cover; return the classifier heads and the rows they read."""
    from timm.layers import Mlp

    if _is_swin(model):
        heads = _check_swin(model, name)
    else:
        heads = _check_vit(model, name)
    for index, block in enumerate(detect(model).blocks()):
        if type(cast(Any, block).mlp) is not Mlp:
            raise TypeError(
                f"{name} has rules for timm's Mlp (fc1, GELU, fc2); block {index}'s mlp is a "
                f"{type(cast(Any, block).mlp).__name__} (a gated MLP has no rule here): use 'generic_attention' "
                "or 'rollout' for this model (attnlrp has no gated-MLP rule either)"
            )
    for head, _ in heads:
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"{name} needs a Linear classifier head, got {type(head).__name__}; "
                "create the model with num_classes > 0"
            )
    return heads


def _check_vit(model: Any, name: str) -> list[Head]:
    from timm.models.vision_transformer import Attention, Block

    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg"):
        raise TypeError(
            f"{name} supports ViTs with global_pool='token' or 'avg', got global_pool={model.global_pool!r}: an "
            "attention-pool or max head has no rule here. Use 'generic_attention' or 'attnlrp' for this model."
        )
    if model.global_pool == "avg" and (
        getattr(model, "pool_include_prefix", False) or getattr(model, "head_dist", None) is not None
    ):
        raise TypeError(
            f"{name} reads an avg-pool head as the mean of the patch tokens; this model's head also averages "
            "prefix tokens or has a distillation head. Create it with pool_include_prefix=False and one head."
        )
    for index, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if type(block) is not Block or type(attn) is not Attention or cast(Any, attn).gate is not None:
            raise TypeError(
                f"{name} has rules for timm's pre-norm Block with Attention and Mlp; block {index} "
                f"is a {type(block).__name__} with {type(attn).__name__} and {type(block.mlp).__name__}"
            )
    if model.global_pool == "avg":
        return [(model.head, None)]
    heads: list[Head] = [(model.head, 0)]
    if getattr(model, "head_dist", None) is not None:
        heads.append((model.head_dist, 1))  # distilled DeiT: logits = (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    return heads


def _check_swin(model: Any, name: str) -> list[Head]:
    from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, WindowAttention

    if getattr(model, "absolute_pos_embed", None) is not None:
        raise TypeError(
            f"{name} has no rule for Swin's absolute position embedding; create the model without it, or use "
            "'attnlrp' or 'generic_attention'"
        )
    for index, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, (nn.Identity, PatchMerging)) or (
            index == 0 and not isinstance(stage.downsample, nn.Identity)
        ):
            raise TypeError(
                f"{name} has rules for timm's PatchMerging between stages, got a "
                f"{type(stage.downsample).__name__} in stage {index}"
            )
    for index, block in enumerate(detect(model).blocks()):
        if type(block) is not SwinTransformerBlock or type(cast(Any, block).attn) is not WindowAttention:
            raise TypeError(
                f"{name} has rules for timm's SwinTransformerBlock with WindowAttention; block {index} is a "
                f"{type(block).__name__}"
            )
    return [(model.head.fc, None)]


def check_pixel_rule(model: Any, name: str) -> nn.Conv2d:
    """The patch convolution, when the z^B rule covers it (stride = kernel size, no padding); else a ``TypeError``."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not (
        isinstance(proj, nn.Conv2d)
        and tuple(proj.kernel_size) == tuple(proj.stride)
        and tuple(proj.padding) == (0, 0)
        and tuple(proj.dilation) == (1, 1)
        and proj.groups == 1
    ):
        raise TypeError(
            f"{name}'s pixel map needs a patch embedding convolution with stride = kernel size and no padding, got "
            f"{proj!r}; its patch map (calling the explainer) works on this model"
        )
    return proj


def check_backward_supported(model: nn.Module, attention: list[nn.Module], conv_gamma: float) -> None:
    """Raise a ``TypeError`` for what the rules don't cover (gated MLPs, attention without ``qkv``, no head)."""
    from timm.layers import Mlp

    for index, module in enumerate(attention):
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        if not (
            isinstance(qkv, nn.Linear)
            and isinstance(proj, nn.Linear)
            and isinstance(getattr(module, "attn_drop", None), nn.Module)
        ):
            raise TypeError(
                f"attnlrp needs attention with a fused qkv Linear, an attn_drop module and a proj Linear; attention "
                f"{index} is a {type(module).__name__}; use 'generic_attention' or 'rollout' for this model"
            )
        if getattr(module, "gate", None) is not None:
            raise TypeError(
                f"attnlrp has no rule for gated attention (attention {index}); use 'generic_attention' or 'rollout'"
            )
    for name, module in model.named_modules():
        if name.endswith("mlp") and type(module) is not Mlp:
            raise TypeError(
                f"attnlrp has rules for timm's Mlp (fc1, activation, fc2); {name} is a {type(module).__name__}: "
                "use 'generic_attention' or 'rollout' for this model"
            )
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and conv_gamma != 0:
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise TypeError(
                    f"attnlrp's gamma rule needs convolutions with numeric zero padding; {name} has padding "
                    f"{module.padding!r}, padding_mode {module.padding_mode!r} (use conv_gamma=0)"
                )
    classifier = cast(Any, model).get_classifier()
    for head in classifier if isinstance(classifier, tuple) else (classifier,):
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"attnlrp needs a Linear classifier head, got {type(head).__name__}; "
                "create the model with num_classes > 0"
            )
