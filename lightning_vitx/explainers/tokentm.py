"""TokenTM: how each block transforms tokens (length, direction), combined with gradient-weighted attention."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Capture, CaptureNeeds, check_capture_supported
from lightning_vitx.explainers._propagation import propagate_token_transformation
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["TokenTM", "transformation_weights"]

Score = Literal["logit", "probability"]
Necc = Literal["auto", "softmax", "cosine"]
GradientReLU = Literal["per_head", "after_mean"]
EPSILON = 1e-8  # as the third-party implementation guards the length ratio


def transformation_weights(before: Tensor, after: Tensor, necc: Literal["softmax", "cosine"] = "softmax") -> Tensor:
    """``[B, N]`` weights of a transformation ``before -> after`` (``[B, N, D]`` each): length ratio times NECC.

    ``W_i = |after_i| / (|before_i| + 1e-8) * NECC_i`` with ``NECC = softmax_i(cos(before_i, after_i))`` over the
    sample's tokens (``necc="softmax"``, the third-party implementation) or the cosine itself (``"cosine"``).

    Example::

        >>> import torch
        >>> before = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> transformation_weights(before, 3 * before)  # lengths x3, directions kept: 3 * softmax([1, 1])
        tensor([[1.5000, 1.5000]])
        >>> transformation_weights(before, 3 * before, necc="cosine")
        tensor([[3., 3.]])
    """
    ratio = after.norm(dim=-1) / (before.norm(dim=-1) + EPSILON)
    cosine = F.cosine_similarity(before, after, dim=-1)
    return ratio * (cosine.softmax(dim=-1) if necc == "softmax" else cosine)


@register(
    ExplainerInfo(
        name="tokentm",
        needs_gradients=True,
        readout=True,
        families=READOUT_FAMILIES,
        description="C0 = diag|E0|, C <- (I + W_mlp)(I + (mean_h A W_attn) * mean_h (grad A)^+) C over all blocks",
        reference="Wu, Duan, Kang, Tang & Yan 2024, Token Transformation Matters (CVPR 2024, arXiv 2403.14552)",
        callable_target=True,
    )
)
class TokenTM(ReadoutExplainer):
    """``w U_L ... U_1 C_0`` over the patch columns: attention weighted by how blocks transform the tokens.

    Per block, with input tokens ``E_in``, ``E_mid = E_in +`` attention branch and output ``E_out`` (the capture's
    token states), ``U_attn = I + (Ā diag W(E_in, E_mid)) ⊙ G`` with ``Ā = mean_h A`` and
    ``G = mean_h ReLU(dy/dA)``, ``U_mlp = I + diag W(E_mid, E_out)`` (``transformation_weights``), and
    ``U = U_mlp U_attn``; ``C_0 = diag(|E^0_i|)`` over the first block's input tokens. The readout row ``w`` (the
    class token, the mean of DeiT's two, or the mean of the patch rows for avg-pool heads) is carried down as a
    vector, ``O(L N^2)``; prefix columns are dropped at the end, like the other readouts.

    Sources: the paper (read through its abstract, Fig. 3 caption and reviews) gives the initialisation by token
    lengths, length and direction (L2 norm, cosine) as transformation weights, and ``U = I + E_h(grad A) ⊙ T``. The
    rest is the third-party implementation of the LibraGrad authors (``decompv`` ``transform_TokenTM``): which token
    states are before/after, the softmax NECC, ReLU per head before the head mean; the defaults follow it. Ours:
    the logit as default objective (their pipeline differentiates the probability: ``score="probability"``), the
    alternatives ``necc="cosine"`` and ``gradient_relu="after_mean"``, and Swin: the same per block within each
    stage's windows, and at each patch merging the vector spread uniformly to the four merged tokens (the uniform
    rule of the rollout family; the merging's linear reduction mixes the four children's channels, so it has no
    per-token length ratio or cosine to weight them by). ``E^0`` is the first block's input (after ``norm_pre``
    where a model has one; theirs is before it).

    Args:
        model: a timm ViT / DeiT / Swin.
        score: what the attention gradients differentiate: the target's ``"logit"`` or its softmax
            ``"probability"`` (then it needs a capture pass of its own in a group of logit-based explainers).
        necc: ``"softmax"`` of the cosines over the tokens (third-party), or the ``"cosine"`` itself; ``"auto"``
            (default): softmax where the head reads a class token, cosine on avg-pool heads (Swin, ``global_pool=
            "avg"``). With the softmax there, the update terms are about ``1/N`` of the identity, the map follows
            the patch embeddings' norms and ignores the learned blocks: on the tests' trained tiny Swin its
            Spearman with the maps of the same model with head and every block re-drawn is .89 (cosine: .16),
            its pointing game .07 (cosine: .90), deletion with the mean baseline .76 (cosine: .47).
        gradient_relu: ``"per_head"`` (``mean_h ReLU(dy/dA)``, third-party) or ``"after_mean"``
            (``ReLU(mean_h dy/dA)``).

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("tokentm", model)(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """

    def __init__(
        self, model: nn.Module, score: Score = "logit", necc: Necc = "auto", gradient_relu: GradientReLU = "per_head"
    ) -> None:
        super().__init__(model)
        check_choice("score", score, Score)
        check_choice("necc", necc, Necc)
        check_choice("gradient_relu", gradient_relu, GradientReLU)
        self.score, self.necc, self.gradient_relu = score, necc, gradient_relu
        check_capture_supported(self.adapter, self.capture_needs(), "tokentm")  # post-norm blocks: refused here

    def capture_needs(self) -> CaptureNeeds:
        return CaptureNeeds(gradients=True, token_states=True, objective=self.score)

    def read(self, record: Capture) -> Tensor:
        grads = record.require_gradients("tokentm")
        states = record.require_token_states("tokentm")
        if record.objective != self.score:
            raise ValueError(
                f"tokentm(score={self.score!r}) needs gradients of the {self.score}, the capture differentiated the "
                f"{record.objective}: capture with CaptureNeeds(objective={self.score!r})"
            )
        necc = self.necc
        if necc == "auto":
            necc = "cosine" if record.layout.readout == "avg" else "softmax"
        fused, attention_scales, mlp_scales = [], [], []
        for attention, grad, state in zip(record.attentions, grads, states, strict=True):
            positive = grad.clamp(min=0).mean(dim=1) if self.gradient_relu == "per_head" else grad.mean(1).clamp(min=0)
            fused.append(attention.mean(dim=1) * positive)
            attention_scales.append(transformation_weights(state["input"], state["mid"], necc))
            mlp_scales.append(transformation_weights(state["mid"], state["output"], necc))
        vector = propagate_token_transformation(
            record.readout_weights(), fused, attention_scales, mlp_scales, record.geometries
        )
        return record.patch_map(vector * states[0]["input"].norm(dim=-1), block=0)
