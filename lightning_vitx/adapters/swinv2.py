"""Adapter for timm's SwinTransformerV2: cosine window attention, continuous position bias, post-norm blocks."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from lightning_vitx.adapters.base import register_adapter
from lightning_vitx.adapters.swin import SwinTransformerAdapter

__all__ = ["SwinTransformerV2Adapter"]

_NO_LRP_RULE = (
    "its LRP rules are written for dot-product attention scaled by head_dim ** -0.5 in pre-norm blocks; SwinV2's "
    "cosine attention (normalised queries and keys), position-bias MLP and norm after each branch have none"
)
_POST_NORM = "it reads the token states around pre-norm blocks; SwinV2's blocks normalise each branch's output"


def _is_timm_swinv2(model: nn.Module) -> bool:
    try:
        from timm.models.swin_transformer_v2 import SwinTransformerV2
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, SwinTransformerV2)


@register_adapter
class SwinTransformerV2Adapter(SwinTransformerAdapter):
    """Reads the stages, windows and shifts off a timm ``SwinTransformerV2`` (``swinv2_*``, not ``swinv2_cr_*``).

    The token layout is Swin's: no class token, shifted windows, patch merging in front of every stage but the
    first, a head that averages the last stage's tokens; maps come out at the first stage's grid. What differs sits
    inside the blocks: each window attention's logits are the cosine of L2-normalised queries and keys times a
    learned, clamped scale, plus ``16 * sigmoid`` of a position bias an MLP (``cpb_mlp``) computes from log-spaced
    relative coordinates; the softmax's probabilities pass through ``attn_drop`` as in Swin, where they are recorded.
    The blocks are post-norm, ``x + norm1(attn(x))`` then ``x + norm2(mlp(x))``.

    Which explainers work, and why:

    - the readouts of attention and its gradients (``raw_attention``, ``rollout``, ``gmar``, ``gradcam``,
      ``generic_attention``, ``patch_interaction``) and ``legrad``: they read the probabilities after the softmax
      and their gradients, whatever computed the logits; the residual path they assume (``x + f(x)``) is there,
      with the norm inside the branch.
    - ``tokentm`` and ``layernorm_stats`` are refused at ``create``: they read the token states around pre-norm
      blocks (the norm in front of each branch, its input the residual stream); here the norm closes the branch.
    - the LRP family (``lrp``, ``partial_lrp``, ``transformer_attribution``, ``attnlrp``) is refused at
      ``create``: its rules are written for dot-product attention scaled by ``head_dim ** -0.5`` in pre-norm blocks,
      and have none for the query/key normalisation of cosine attention, the position-bias MLP or a norm after
      each branch.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=32, window_size=4)
        >>> SwinTransformerV2Adapter(model).layout(torch.zeros(1, 3, 32, 32))
        TokenLayout(num_prefix_tokens=0, grid_size=(8, 8), readout='avg', readout_tokens=(), readout_grid_size=(1, 1))
    """

    family = "swinv2"
    description = (
        "timm SwinTransformerV2 (swinv2_*: cosine window attention, continuous position bias, post-norm blocks, "
        "global_pool='avg')"
    )

    # the explainers this model cannot take, and why (a refusal's message says it and suggests none of them)
    refusals: ClassVar[dict[str, str]] = {
        **{name: _NO_LRP_RULE for name in ("lrp", "partial_lrp", "transformer_attribution", "attnlrp")},
        **{name: _POST_NORM for name in ("tokentm", "layernorm_stats")},
    }

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_swinv2(model)

    @property
    def pre_norm(self) -> bool:
        """False: every block normalises its branches' outputs (``x + norm1(attn(x))``), not their inputs."""
        return False

    def merging_norms(self) -> dict[int, nn.Module]:
        """None: SwinV2's patch merging normalises after its reduction (and no explainer reads it here)."""
        return {}
