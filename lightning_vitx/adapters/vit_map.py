"""Adapter for timm ViTs with an attention-pool head (``global_pool='map'``: SigLIP, the ``*_siglip_*`` models)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_vitx.adapters.base import TokenLayout, qualified_name, register_adapter
from lightning_vitx.adapters.vit import VisionTransformerAdapter, _is_timm_vit

__all__ = ["AttentionPoolViTAdapter"]

_NO_LRP_RULE = (
    "its attention-pool head (timm AttentionPoolLatent: a learned query's attention, then an MLP) has no LRP rule"
)


@register_adapter
class AttentionPoolViTAdapter(VisionTransformerAdapter):
    """Reads a timm ``VisionTransformer`` whose head pools the tokens by attention (``global_pool='map'``).

    The head is timm's ``AttentionPoolLatent``: a learned latent query attends to the last block's tokens (the
    patch tokens, or every token when the model pools the prefix too), its output goes through a projection and
    an MLP, then the classifier (none for SigLIP's image tower). The blocks are the plain ViT's, read as for
    ``VisionTransformerAdapter``. The readout row ``w`` the explainers carry down, a class token's one-hot for a ViT,
    is here the pool's attention of its query over the tokens, mean over heads (``Capture.readout_weights``; the
    mean of the latents' rows when the pool has several and averages them): rollout is ``w`` times the blocks'
    rollout, raw attention ``w`` times a block's attention. The pool's probabilities are computed, per image, from
    the query and keys the pool itself produces (read at its ``q_norm`` and ``k_norm``, identities unless
    ``qk_norm``), so the model runs as found, fused attention in the pool included.

    Which explainers work: every readout (``raw_attention``, ``rollout``, ``gmar``, ``gradcam``,
    ``generic_attention``, ``tokentm``, ``layernorm_stats``, ``patch_interaction``): the blocks are pre-norm timm
    blocks and their attention gradients come through the model's own pool and head; ``legrad``, which runs the
    model's own ``forward_head`` (the pool included) on every block's tokens. Refused at create: ``lrp``,
    ``partial_lrp``, ``transformer_attribution`` and ``attnlrp``, whose relevance rules stop at the head: the
    attention pool (a softmax over the tokens, then an MLP on the pooled query) has no rule.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=2)
        >>> AttentionPoolViTAdapter(model).layout(torch.zeros(1, 3, 224, 224))
        TokenLayout(num_prefix_tokens=0, grid_size=(14, 14), readout='map', readout_tokens=(), readout_grid_size=None)
    """

    family = "vit_map"
    description = "timm VisionTransformer with an attention-pool head (global_pool='map', vit_*_siglip_*)"
    refusals: ClassVar[dict[str, str]] = {
        name: _NO_LRP_RULE for name in ("lrp", "partial_lrp", "transformer_attribution", "attnlrp")
    }

    def _check_head(self) -> None:
        from timm.layers import AttentionPoolLatent

        pool: Any = self._vit.attn_pool
        kind = getattr(self.model, "global_pool", None)
        if not isinstance(pool, AttentionPoolLatent):
            raise ValueError(
                f"global_pool={kind!r} is not supported yet ({qualified_name(self.model)}): its attention pool is a "
                f"{type(pool).__name__}; the explainers read timm's AttentionPoolLatent ('map'). Create the model "
                "with global_pool='map', 'token' or 'avg'."
            )
        if getattr(pool, "pool", None) not in ("token", "avg"):
            raise ValueError(
                f"global_pool={kind!r} with the attention pool's pool_type={getattr(pool, 'pool', None)!r} is not "
                f"supported ({qualified_name(self.model)}): the head must read one vector per image, the first "
                "latent ('token') or their mean ('avg')."
            )
        for name in ("q_norm", "k_norm"):
            if not isinstance(getattr(pool, name, None), nn.Module):
                raise TypeError(
                    f"the attention pool of this {qualified_name(self.model)} has no {name} module, where its query "
                    "and keys are read; use a timm version whose AttentionPoolLatent has q_norm and k_norm"
                )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_vit(model) and getattr(model, "attn_pool", None) is not None

    def readout_tokens(self) -> tuple[int, ...]:
        return ()

    def layout(self, images: Tensor) -> TokenLayout:
        return dataclasses.replace(super().layout(images), readout="map", readout_tokens=())

    def readout_attention_hooks(self, store: list[Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that append, per forward, the pool's attention per head, detached: ``[B, heads, K]``.

        ``K`` counts the tokens the pool reads, the last ``K`` of the block's tokens. The probabilities are
        ``softmax(q k^T / sqrt(head_dim))`` from the query and keys the pool computes (after ``q_norm`` and
        ``k_norm``); the first latent's row, or the mean of the latents' rows when the pool averages them.
        """
        pool: Any = self._vit.attn_pool
        queries: list[Tensor] = []

        def keep_query(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            queries.append(output.detach())

        def attend(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            with torch.no_grad():
                query, keys = queries.pop().float(), output.detach().float()  # [B, h, latents, d], [B, h, K, d]
                probabilities = (query @ keys.transpose(-2, -1) * pool.scale).softmax(dim=-1)
                store.append(probabilities[:, :, 0] if pool.pool == "token" else probabilities.mean(dim=2))

        return [pool.q_norm.register_forward_hook(keep_query), pool.k_norm.register_forward_hook(attend)]
