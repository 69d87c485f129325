"""Dense per-image oracles shared by the EVA, BEiT and relpos-ViT adapter tests.

Each family's test writes out how its attention computes the logits (``attention_logits(block, tokens)``: the
queries and keys from the module's own weights, rotated or biased by position); here they become probabilities,
one image at a time, and the readout explainers' maps are recomputed from them with dense matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Logits = Callable[[nn.Module, Tensor], Tensor]  # (block, block input [1, N, C]) -> [heads, N, N]


def per_image_attention(model: nn.Module, images: Tensor, tokens_of: Callable, logits: Logits, run_block) -> list:
    """Per block, ``[B, heads, N, N]``: softmax of ``logits`` for each image alone, blocks run one by one."""
    per_block: list[list[Tensor]] = [[] for _ in model.blocks]
    with torch.no_grad():
        for image in images:
            x = tokens_of(image[None])
            for index, block in enumerate(model.blocks):
                per_block[index].append(logits(block, x).softmax(dim=-1))
                x = run_block(block, x)
    return [torch.stack(attentions) for attentions in per_block]


def rollout_oracle(attentions: list[Tensor], readout: Tensor) -> Tensor:
    """``w rownorm(mean_h A_L + I) ... rownorm(mean_h A_1 + I)`` with dense ``[B, N, N]`` matrices: ``[B, N]``."""
    vector = readout
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + torch.eye(attention.shape[-1])
        vector = torch.einsum("bn,bnm->bm", vector, fused / fused.sum(dim=-1, keepdim=True))
    return vector


def readout_row(batch: int, tokens: int, prefix: int, pool: str) -> Tensor:
    """What the head reads: the class token (``'token'``) or the mean of the patch tokens (``'avg'``)."""
    row = torch.zeros(batch, tokens)
    if pool == "token":
        row[:, 0] = 1.0
    else:
        row[:, prefix:] = 1.0 / (tokens - prefix)
    return row


def peak(model: nn.Module, seed: int = 1) -> nn.Module:
    """Peaked attention (random init is near uniform) and random relative position tables (zeros at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "qkv", None), nn.Linear):
                module.qkv.weight.normal_(0.0, 0.3, generator=generator)
        for name, param in model.named_parameters():
            if name.endswith(("relative_position_bias_table", "q_bias", "v_bias")):
                param.normal_(0.0, 1.0, generator=generator)
    return model.eval()


def assert_attention_equals(recorded: list[Tensor], expected: list[Tensor], blocks: int = 2) -> None:
    """Each block's recorded attention equals the dense oracle's (1e-5), and the oracle is peaked enough to tell."""
    assert len(recorded) == len(expected) == blocks
    for attention, dense in zip(recorded, expected, strict=True):
        assert dense.std() > 0.05, "the oracle's attention is near uniform: the comparison would be weak"
        torch.testing.assert_close(attention, dense, rtol=0, atol=1e-5)
