"""Patch-to-patch interactions and each patch's effective responsive field (after Ma et al. 2022).

For block ``l`` the interaction of query patch ``i`` with key patch ``j`` is read from the shared capture pass:

- ``indicator="attention"``: ``I^l_ij = mean_h A^l_h[i, j]``, how much of ``j`` the block mixes into ``i``;
- ``indicator="gradient"``: ``I^l_ij = mean_h (dy_c/dA^l_h ⊙ A^l_h)^+[i, j]``, the first-order estimate of how much the
  target logit ``y_c`` would drop if the edge were removed (``Δy ≈ -A_ij dy_c/dA_ij``), clamped per head then
  averaged, as ``generic_attention`` does.

Rows and columns are patch tokens only (prefix tokens dropped). The *effective responsive field* (ERF) of patch
``i`` is the smallest set of patches ``j`` whose interactions hold a share ``mass`` of row ``i``'s total; its
*size* is the number of patches in it and its *tendency* is the mass-weighted mean offset
``Σ_j I_ij (pos_j - pos_i) / Σ_j I_ij`` over all patches, a ``(row, column)`` vector in patch units.
Ma et al. publish no code and the indicator formula could not be checked against their text (docs/methods.md §8):
the indicators, the mass rule and its default share are this project's choices, the default indicator the one
whose scores track the exact edge-removal effects best on the trained shapes model (see ``edge_ablation_effects``).

On Swin, interactions exist only within each block's (shifted) windows: the matrices are the window attention
scattered onto the stage's token grid (zero across windows), and later stages live on their merged grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx._batching import chunk_slices
from lightning_vitx._checks import check_choice
from lightning_vitx.adapters import Capture, CaptureNeeds, Target, capture_pass, detect, explaining_forward
from lightning_vitx.adapters.geometry import AttentionGeometry, DenseAttention
from lightning_vitx.explainers.patch_interaction import INDICATORS, Indicator, fused_indicators

__all__ = [
    "PatchInteractions",
    "edge_ablation_effects",
    "interaction_matrices",
    "patch_interactions",
    "receptive_fields",
    "sample_pairs",
]

DEFAULT_INDICATOR: Indicator = "gradient"
DEFAULT_MASS = 0.9


@dataclass
class PatchInteractions:
    """What ``patch_interactions`` returns: per block (bottom-up), the interactions and receptive fields.

    Attributes:
        interactions: per block ``[B, P_l, P_l]``, row = query patch, column = key patch, non-negative.
        grid_sizes: per block, the token grid ``(gh, gw)`` its patches lie on (``P_l = gh * gw``).
        erf: per block ``[B, P_l, P_l]`` bool, row ``i`` marks the patches in patch ``i``'s ERF.
        erf_size: per block ``[B, P_l]``, patches in each ERF (0 where a patch has no interaction mass).
        tendency: per block ``[B, P_l, 2]``, each patch's mass-weighted mean offset ``(rows, columns)``.
        target: ``[B]``, the class explained.
        indicator: ``"attention"`` or ``"gradient"``.
        mass: the share of each row's interaction mass its ERF holds.
    """

    interactions: list[Tensor]
    grid_sizes: list[tuple[int, int]]
    erf: list[Tensor]
    erf_size: list[Tensor]
    tendency: list[Tensor]
    target: Tensor
    indicator: str
    mass: float

    @property
    def num_layers(self) -> int:
        return len(self.interactions)

    def mean_erf_size(self) -> Tensor:
        """``[B, L]``: each block's mean ERF size, counted in patches of the first block's grid.

        On Swin a merged token covers several first-stage patches (4 per merge), so sizes compare across stages.
        """
        first = self.grid_sizes[0][0] * self.grid_sizes[0][1]
        per_token = [first / (gh * gw) for gh, gw in self.grid_sizes]
        return torch.stack(
            [size.float().mean(dim=-1) * scale for size, scale in zip(self.erf_size, per_token, strict=True)], 1
        )

    def pair_scores(self, pairs: Tensor) -> Tensor:
        """``[B, num_pairs]``: each ``(query, key)`` patch pair's interaction summed over all blocks.

        The indicator's prediction for removing that edge in every block (``edge_ablation_effects``); needs the
        same patch grid in every block (ViT, DeiT).
        """
        if len(set(self.grid_sizes)) != 1:
            raise ValueError("pair_scores needs one patch grid in every block (ViT); Swin merges patches")
        pairs = _check_pairs(pairs, self.grid_sizes[0], self.interactions[0].device)
        total = torch.stack(self.interactions).sum(dim=0)
        return total[:, pairs[:, 0], pairs[:, 1]]


def _check_indicator(indicator: str) -> None:
    check_choice("indicator", indicator, INDICATORS)


def _check_mass(mass: float) -> None:
    if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be a share in (0, 1], got {mass!r}")


def _dense(fused: Tensor, geometry: AttentionGeometry) -> Tensor:
    """A block's head-fused indicator -> ``[B, P, P]`` over its patch tokens (windows scattered, zero across)."""
    if isinstance(geometry, DenseAttention):
        start = geometry.num_prefix_tokens
        return fused[:, start:, start:]
    tokens = geometry.num_tokens
    numbered = torch.arange(1, tokens + 1, dtype=torch.float32, device=fused.device)[None]  # exact below 2^24
    index = geometry.to_windows(numbered)[0].round().long() - 1  # [windows, w]; padding -> -1
    index = torch.where(index < 0, tokens, index)  # padding goes to a spare row and column, cut off below
    dense = fused.new_zeros(fused.shape[0], tokens + 1, tokens + 1)
    dense[:, index[:, :, None], index[:, None, :]] = fused
    return dense[:, :tokens, :tokens]


def interaction_matrices(record: Capture, indicator: Indicator = DEFAULT_INDICATOR) -> list[Tensor]:
    """Per block ``[B, P_l, P_l]`` patch-to-patch interactions from a capture (see the module docstring)."""
    _check_indicator(indicator)
    fused = fused_indicators(record, indicator)
    return [_dense(matrix, geometry) for matrix, geometry in zip(fused, record.geometries, strict=True)]


def _offsets(grid_size: tuple[int, int], device: torch.device) -> Tensor:
    """``[P, P, 2]``: ``pos_j - pos_i`` as ``(rows, columns)`` for patches in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float().to(device)
    return positions[None, :, :] - positions[:, None, :]


def receptive_fields(
    interactions: Tensor, grid_size: tuple[int, int], mass: float = DEFAULT_MASS
) -> tuple[Tensor, Tensor, Tensor]:
    """Each patch's ERF, its size and its tendency from interactions ``[..., P, P]`` (row = query patch).

    The ERF of row ``i`` is the smallest set of columns whose values reach ``mass`` of the row's sum (largest
    first; ties go to the lower index). Rows that sum to zero get an empty ERF and a zero tendency.

    Returns:
        ``(erf [..., P, P] bool, size [..., P] long, tendency [..., P, 2])``, the tendency as ``(rows, columns)``.

    Example::

        >>> interactions = torch.tensor([[[0.0, 3.0], [1.0, 1.0]]])  # a 1x2 grid
        >>> erf, size, tendency = receptive_fields(interactions, grid_size=(1, 2), mass=0.9)
        >>> size.tolist(), tendency.tolist()
        ([[1, 2]], [[[0.0, 1.0], [0.0, -0.5]]])
    """
    _check_mass(mass)
    count = grid_size[0] * grid_size[1]
    if interactions.shape[-2:] != (count, count):
        raise ValueError(
            f"expected interactions [..., {count}, {count}] for a {grid_size} grid, got {interactions.shape}"
        )
    values = interactions.float().clamp(min=0)
    total = values.sum(dim=-1, keepdim=True)
    share = values / total.clamp_min(torch.finfo(values.dtype).tiny)
    ordered, order = share.sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(dim=-1) - ordered  # share held by the larger entries
    keep = (before < mass - 1e-6) & (ordered > 0)
    erf = torch.zeros_like(keep).scatter(-1, order, keep)
    tendency = torch.einsum("...ij,ijc->...ic", share, _offsets(grid_size, values.device))
    return erf, erf.sum(dim=-1), tendency


def patch_interactions(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    indicator: Indicator = DEFAULT_INDICATOR,
    mass: float = DEFAULT_MASS,
    record: Capture | None = None,
) -> PatchInteractions:
    """Patch-to-patch interactions per image and block, and each patch's effective responsive field.

    One capture pass for the batch (with one backward for ``indicator="gradient"``); ``O(N^2)`` memory per block
    and image, inherent to the analysis (Swin: ``O(N_s^2)`` per stage, mostly zeros across windows).

    Args:
        model: a timm ViT / DeiT / Swin.
        images: ``[B, 3, H, W]`` as the model takes them.
        target: ``None`` (the predicted class), an ``int`` or ``LongTensor[B]``; used by the gradient indicator.
        indicator: ``"gradient"`` (``(dy_c/dA ⊙ A)^+``, head mean) or ``"attention"`` (``A``, head mean).
        mass: share of each patch's interaction mass its ERF holds.
        record: a capture of these images to read instead of running a pass (with gradients for ``"gradient"``).

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, depth=2)
        >>> result = patch_interactions(model, torch.randn(2, 3, 224, 224))
        >>> tuple(result.interactions[0].shape), tuple(result.tendency[-1].shape), tuple(result.mean_erf_size().shape)
        ((2, 196, 196), (2, 196, 2), (2, 2))
    """
    _check_indicator(indicator)
    _check_mass(mass)
    if record is None:
        record = capture_pass(detect(model), images, target, CaptureNeeds(gradients=indicator == "gradient"))
    with torch.autocast(device_type=record.logits.device.type, enabled=False):
        matrices = interaction_matrices(record, indicator)
        grids = [geometry.grid_size for geometry in record.geometries]
        fields = [receptive_fields(matrix, grid, mass) for matrix, grid in zip(matrices, grids, strict=True)]
    return PatchInteractions(
        interactions=matrices,
        grid_sizes=grids,
        erf=[erf for erf, _, _ in fields],
        erf_size=[size for _, size, _ in fields],
        tendency=[tendency for _, _, tendency in fields],
        target=record.target,
        indicator=indicator,
        mass=float(mass),
    )


def _check_pairs(pairs: Tensor, grid_size: tuple[int, int], device: torch.device) -> Tensor:
    count = grid_size[0] * grid_size[1]
    if not isinstance(pairs, Tensor) or pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.is_floating_point():
        raise ValueError("expected pairs as a LongTensor [num_pairs, 2] of (query patch, key patch) indices")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= count):
        raise ValueError(f"patch indices must lie in [0, {count}) for a {grid_size} grid, got {pairs.tolist()[:4]}...")
    return pairs.to(device=device, dtype=torch.long)


class _EdgeRemoval:
    """Forward hooks on each attention's ``attn_drop`` that remove one edge per row of the batch and renormalise."""

    def __init__(self, queries: Tensor, keys: Tensor) -> None:
        self.queries, self.keys = queries, keys

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        rows = torch.arange(output.shape[0], device=output.device)
        ablated = output.clone()
        ablated[rows, :, self.queries, self.keys] = 0.0
        kept = ablated[rows, :, self.queries, :]
        total = kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
        ablated[rows, :, self.queries, :] = kept / total
        return ablated


def edge_ablation_effects(
    model: nn.Module, images: Tensor, pairs: Tensor, target: Target = None, batch_size: int = 64
) -> Tensor:
    """The exact effect of removing interaction edges: ``y_c(model) - y_c(model without edge i -> j)``.

    For each ``(query patch i, key patch j)`` pair the attention entry ``A[i, j]`` is set to zero in every block
    and head and row ``i`` renormalised (the same as a ``-inf`` attention logit), through temporary forward hooks
    on the attention modules' ``attn_drop``; the drop of the target logit is recorded (positive: the edge
    supported the target). One forward per ``batch_size`` rows of ``images x pairs``, without gradients; the
    model is left as found.

    Args:
        model: a timm ViT / DeiT (dense attention; on Swin an edge exists only in the blocks whose window holds
            both patches, so it is refused).
        images: ``[B, 3, H, W]``.
        pairs: ``LongTensor [num_pairs, 2]`` of patch indices (row-major over the patch grid, prefix excluded).
        target: ``None`` (the predicted class), an ``int`` or ``LongTensor[B]``.
        batch_size: rows per forward pass.

    Returns:
        ``[B, num_pairs]`` float32 logit drops.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, depth=2)
        >>> edge_ablation_effects(model, torch.randn(2, 3, 224, 224), torch.tensor([[0, 1], [5, 5]])).shape
        torch.Size([2, 2])
    """
    adapter = detect(model)
    with explaining_forward(adapter, images, target) as call:
        geometries = adapter.attention_geometries(images)
        if not all(isinstance(geometry, DenseAttention) for geometry in geometries):
            raise TypeError(
                f"edge_ablation_effects needs dense attention (ViT, DeiT), got a {adapter.family} model: window "
                "attention connects two patches only in the blocks whose window holds both"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        layout = adapter.layout(images)
        pairs = _check_pairs(pairs, layout.grid_size, images.device) + layout.num_prefix_tokens
        batch = images.shape[0]
        attention: list[Any] = adapter.attention_modules()
        logits = call.forward().float()
        inputs, target_ids = call.inputs, call.target_ids
        base = logits.gather(1, target_ids[:, None])[:, 0]
        # rows are (pair, image), pair-major; each forward takes whole pairs
        per_pass = max(1, batch_size // max(batch, 1))
        drops = []
        for chunk in chunk_slices(pairs.shape[0], per_pass):
            chosen = pairs[chunk]
            removal = _EdgeRemoval(chosen[:, 0].repeat_interleave(batch), chosen[:, 1].repeat_interleave(batch))
            handles = []
            try:
                handles = [module.attn_drop.register_forward_hook(removal) for module in attention]
                ablated = model(inputs.repeat(chosen.shape[0], 1, 1, 1)).float()
            finally:
                for handle in handles:
                    handle.remove()
            values = ablated.gather(1, target_ids.repeat(chosen.shape[0])[:, None])[:, 0]
            drops.append(base.repeat(chosen.shape[0]) - values)
        result = torch.cat(drops).view(-1, batch).T if drops else logits.new_zeros(batch, 0)
    return result.float().contiguous()


def sample_pairs(grid_size: tuple[int, int], count: int, seed: int = 0) -> Tensor:
    """``[count, 2]`` random ``(query, key)`` patch pairs (``i != j``), from a generator seeded with ``seed``."""
    patches = grid_size[0] * grid_size[1]
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randint(patches, (count,), generator=generator)
    keys = (queries + torch.randint(1, patches, (count,), generator=generator)) % patches
    return torch.stack([queries, keys], dim=1)
