"""AttnLRP (Achtibat et al. 2024) and CP-LRP (Ali et al. 2022): LRP of the target logit in one modified backward.

Forward hooks (``modified_backward``; each passes its module's output through a small autograd function whose
backward is the rule's) give the user's own model, for one pass, a backward whose gradient times input is the
relevance of the AttnLRP rules (docs/methods.md §9.1): identity rule through the MLP's activation, LayerNorm with
its standard deviation held constant, the uniform rule through ``q k^T`` and ``A v`` with AttnLRP's softmax rule
(or, with ``attention_rule="cp"``, the attention probabilities detached), and the gamma rule on the Linear layers
and the patch-embedding convolution. The input's relevance ``x * dy_c/dx`` is summed over channels (the pixel map)
and over each patch's pixels (the patch map). Swin needs nothing more: its windows, shifts, padding and patch
merging are permutations and sums, which the plain gradient carries.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Target, explaining_forward
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.base import Explainer
from lightning_vitx.explainers.lrp.composites import modified_backward
from lightning_vitx.explainers.lrp.modified_backward import AttentionRuleName, fused_attention, lrp_rules

__all__ = ["AttnLRP"]


@register(
    ExplainerInfo(
        name="attnlrp",
        needs_gradients=True,
        readout=False,
        families=("vit", "swin"),
        description="AttnLRP (or CP-LRP) relevance of the input pixels, one modified backward, summed per patch",
        reference="Achtibat et al. 2024, AttnLRP (arXiv 2402.05602); Ali et al. 2022, XAI for Transformers: "
        "Better Explanations through Conservative Propagation (arXiv 2202.07304)",
        signed=True,
        relevance_seed="logit",
        pixel_map=True,
        callable_target=True,
    )
)
class AttnLRP(Explainer):
    """AttnLRP: the relevance of each patch's pixels for the target logit, from one forward and one backward.

    The rules hold for the pass only (forward hooks that change the gradient, not the outputs; all removed on
    exit). Maps are signed and unnormalised; with ``gamma=0``, ``conv_gamma=0`` the relevance is conserved: the
    map sums to the target logit less what the biases (and, for ``"attnlrp"``, each softmax's Taylor bias term)
    absorb. ``pixel_relevance`` gives the map at the input's pixels.

    Args:
        model: a timm ViT or DeiT (class token or ``global_pool="avg"``, distilled, register tokens, pre- or post-norm
            blocks) or a timm Swin, with timm's ``Mlp`` blocks and a Linear classifier head.
        attention_rule: ``"attnlrp"`` (uniform rule on both attention products, softmax rule of AttnLRP) or
            ``"cp"`` (CP-LRP: attention probabilities constant, relevance through the values only; what lxt's
            torchvision-ViT recipe and hilrp use by default).
        gamma: the gamma rule's ``gamma`` on every Linear layer (hilrp's default 0.25; 0 = epsilon rule).
        conv_gamma: the gamma on the patch-embedding convolution (hilrp's default: ``gamma``'s 0.25).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> explainer = create("attnlrp", model, attention_rule="cp")
        >>> images = torch.randn(2, 3, 224, 224)
        >>> explainer(images, target=1).shape, explainer.pixel_relevance(images, target=1).shape
        (torch.Size([2, 14, 14]), torch.Size([2, 224, 224]))
    """

    def __init__(
        self,
        model: nn.Module,
        attention_rule: AttentionRuleName = "attnlrp",
        gamma: float = 0.25,
        conv_gamma: float = 0.25,
    ) -> None:
        super().__init__(model)
        check_choice("attention_rule", attention_rule, AttentionRuleName)
        for option, value in (("gamma", gamma), ("conv_gamma", conv_gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{option} must be a number >= 0, got {value!r}")
        self.attention_rule: AttentionRuleName = attention_rule
        self.gamma, self.conv_gamma = float(gamma), float(conv_gamma)
        self.composite = modified_backward(attention_rule, self.gamma, self.conv_gamma)
        self.composite.check(self.model, self.info.name)

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        """Maps ``[B, gh, gw]``: the input relevance summed over channels and over each patch's pixels."""
        pixels = self.pixel_relevance(images, target)
        ph, pw = (int(size) for size in cast(Any, self.model).patch_embed.patch_size)
        gh, gw = self.adapter.layout(images).grid_size
        pixels = F.pad(pixels, (0, gw * pw - pixels.shape[-1], 0, gh * ph - pixels.shape[-2]))  # dynamic padding
        return pixels.reshape(-1, gh, ph, gw, pw).sum(dim=(2, 4))

    def pixel_relevance(self, images: Tensor, target: Target = None) -> Tensor:
        """Relevance of each input pixel ``[B, H, W]`` (summed over channels), float32, signed.

        Args:
            images: ``[B, 3, H, W]`` as the model takes them.
            target: ``None`` (predicted class), an ``int``, ``LongTensor[B]`` or ``f(outputs) -> Tensor[B]``.
        """
        attention = self.adapter.attention_modules()
        # the uniform rule needs nothing from inside the attention: the fused kernel, where the model used it (the
        # probabilities and the q, k, v copies of the explicit path are then not kept for the backward)
        fused = [module for module in attention if getattr(module, "fused_attn", False)]
        fused = fused if self.attention_rule == "attnlrp" else []
        with explaining_forward(
            self.adapter, images, target, gradients=True, input_grad=True, callable_target=True
        ) as call:
            with (
                fused_attention(fused),
                lrp_rules(self.model, self.composite),
            ):
                logits = call.forward()
            (grad,) = torch.autograd.grad(call.score(logits).sum(), call.inputs)
            inputs = call.inputs
            return (inputs.detach() * grad).float().sum(dim=1)
