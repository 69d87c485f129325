"""LayerNorm token statistics on gradient-weighted attention: our reconstruction of Nguyen, Lee & Kim 2023.

The paper (arXiv 2311.11378) weighs Chefer et al.'s gradient-weighted attention relevance by the statistics of
the tokens in the LayerNorm layers; its method section could not be read and no code is public (docs/methods.md §7).
What is built here: the generic rule ``R <- R + Ā R`` (``Ā = mean_h((dy_c/dA ⊙ A)^+)``, as ``generic_attention``)
with the tokens' LayerNorm statistics entering as one of the candidate integrations of docs/methods.md §7. A
LayerNorm divides each token by its own ``σ_j = sqrt(var_c x_j + eps)``, so everything the attention branch reads
from token ``j`` scales with ``1 / σ_j``; the residual path bypasses the norm.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Capture, CaptureNeeds, check_capture_supported
from lightning_vitx.adapters.capture import TokenStats
from lightning_vitx.adapters.geometry import spread
from lightning_vitx.explainers._propagation import propagate_additive
from lightning_vitx.explainers._registry import READOUT_FAMILIES, ExplainerInfo, register
from lightning_vitx.explainers.base import ReadoutExplainer

__all__ = ["LayerNormStats", "token_weights"]

Rule = Literal["inverse_std", "std", "outlier", "final", "none"]
RULES = ("inverse_std", "std", "outlier", "final", "none")


def token_weights(stats: TokenStats, rule: Rule, outlier_z: float = 2.0) -> Tensor:
    """``[B, N]`` per-token weights from a LayerNorm's statistics, normalised to mean 1 over each sample's tokens.

    ``inverse_std`` and ``final``: ``1 / σ_j``; ``std``: ``σ_j``; ``outlier``: 1, or ``outlier_z / |z_j|`` where the
    z-score of ``σ_j`` across the sample's tokens exceeds ``outlier_z``; ``none``: 1.

    Example::

        >>> stats = TokenStats(mean=torch.zeros(1, 2), std=torch.tensor([[1.0, 3.0]]))
        >>> token_weights(stats, "inverse_std")
        tensor([[1.5000, 0.5000]])
    """
    std = stats.std
    if rule in ("inverse_std", "final"):
        weights = 1.0 / std
    elif rule == "std":
        weights = std
    elif rule == "outlier":
        z = (std - std.mean(dim=-1, keepdim=True)) / std.std(dim=-1, unbiased=False, keepdim=True).clamp_min(1e-12)
        weights = torch.where(z.abs() > outlier_z, outlier_z / z.abs().clamp_min(1e-12), torch.ones_like(z))
    elif rule == "none":
        return torch.ones_like(std)
    else:
        check_choice("rule", rule, RULES)
        raise AssertionError("unreachable: every rule is handled above")
    return weights / weights.mean(dim=-1, keepdim=True)


@register(
    ExplainerInfo(
        name="layernorm_stats",
        needs_gradients=True,
        readout=True,
        families=READOUT_FAMILIES,
        description="generic_attention's map times the last block's LayerNorm 1/std per token (mean 1); "
        "per-layer key weightings as options",
        reference="Nguyen, Lee & Kim 2023, Inspecting Explainability of Transformer Models with Additional "
        "Statistical Information (arXiv 2311.11378); our reconstruction, see docs/methods.md §7",
        callable_target=True,
    )
)
class LayerNormStats(ReadoutExplainer):
    """Gradient-weighted attention relevance with the tokens' LayerNorm statistics (docs/methods.md §7, (i)-(iii)).

    ``Ā^l = mean_h(clamp(dy_c/dA ⊙ A, min=0))`` as in ``generic_attention``. Rules:

    - ``"final"`` (default, chosen on the trained fixtures: see the README's table): ``generic_attention``'s map
      ``w (I + Ā^L) ... (I + Ā^s)`` times the :func:`token_weights` ``1/σ`` of the last block's ``norm2`` (brought
      to the patch grid by nearest upsampling on Swin).
    - per layer, ``w (I + Ā^L D^L) ... (I + Ā^s D^s)`` with ``D^l = diag(s^l)``, the :func:`token_weights` of
      block ``l``'s ``norm1`` (the norm in front of the attention; its tokens are the keys ``Ā``'s columns read);
      on Swin the patch-merging norm weighs the merged tokens the same way before the relevance is spread to the
      finer grid: ``"inverse_std"`` (``s = 1/σ``), ``"std"`` (``s = σ``), ``"outlier"`` (tokens whose ``σ`` is an
      outlier, z-score above ``outlier_z``, down-weighted).
    - ``"none"``: ``generic_attention`` exactly.

    Args:
        model: a timm ViT / DeiT / Swin with LayerNorm ``norm1`` / ``norm2`` in every block.
        rule: one of the rules above.
        start_layer: first block included (0 = all).
        outlier_z: the z-score above which ``"outlier"`` down-weighs a token.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> create("layernorm_stats", model)(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 14, 14])
    """

    def __init__(self, model: nn.Module, rule: Rule = "final", start_layer: int = 0, outlier_z: float = 2.0):
        super().__init__(model)
        check_choice("rule", rule, RULES)
        if not outlier_z > 0:
            raise ValueError(f"outlier_z must be > 0, got {outlier_z}")
        self.rule = rule
        self.start_layer = self._block_index(start_layer, "start_layer")
        self.outlier_z = float(outlier_z)
        check_capture_supported(self.adapter, self.capture_needs(), "layernorm_stats")  # RMSNorm, post-norm

    def capture_needs(self) -> CaptureNeeds:
        return CaptureNeeds(gradients=True, norm_stats=True)

    def read(self, record: Capture) -> Tensor:
        fused = record.gradient_weighted_attention("layernorm_stats")
        if record.norm_stats is None:
            raise ValueError("layernorm_stats needs LayerNorm statistics: capture with CaptureNeeds(norm_stats=True)")
        start = self.start_layer
        stats = record.norm_stats[start:]
        per_layer = self.rule in ("inverse_std", "std", "outlier")
        key_scales: list[Tensor | None] = [None] * len(stats)
        scales: list[Tensor | None] = [None] * len(stats)
        if per_layer:
            key_scales = [token_weights(block["norm1"], self.rule, self.outlier_z) for block in stats]
            for index, block in enumerate(stats):
                if "merge" in block and index > 0:  # the merge under block `index`: weighs its tokens after it
                    scales[index] = token_weights(block["merge"], self.rule, self.outlier_z)
        readout, geometries = record.readout_weights(), record.geometries[start:]
        avg = record.layout.readout == "avg"  # the identity path is a constant there (propagate_additive)
        relevance = propagate_additive(readout, fused[start:], geometries, scales, key_scales, drop_identity=avg)
        maps = record.patch_map(relevance, block=start)
        if self.rule == "final":
            weights = token_weights(record.norm_stats[-1]["norm2"], "final")
            coarse, fine = record.geometries[-1].grid_size, record.layout.grid_size
            weights = weights[:, record.geometries[-1].num_prefix_tokens :]
            upsampled = spread(weights, coarse, fine) / spread(torch.ones_like(weights), coarse, fine)
            maps = maps * upsampled.reshape_as(maps)
        return maps
