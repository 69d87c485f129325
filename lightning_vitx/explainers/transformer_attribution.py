"""Transformer attribution (Chefer, Gur & Wolf 2021): LRP relevance of each attention map, weighted by its gradient.

One forward pass records what the relevance rules read (each sublayer's input, ``q``, ``k``, ``v`` and the
attention probabilities ``A``); one ``torch.autograd.grad`` gives ``dy_c/dA``; then a relevance pass written out
over the block structure carries the relevance from the target logit down to the lowest block explained, keeping
``R^(A)`` (the relevance of each block's attention probabilities) on the way. Rules, as in the authors' code
(``modules/layers_ours.py``, ``baselines/ViT/ViT_LRP.py``; METHODS.md §3.2), with ``s(a, b) = a / (b + 1e-9)``
and 0 where ``b = 0``:

- Linear (``alpha = 1``, bias ignored): ``R_x = x+ (s(R, z) W+) + x- (s(R, z) W-)``, ``z = x+ W+^T + x- W-^T``.
- GELU, LayerNorm, softmax, dropout, layer scale: relevance passes unchanged.
- ``A v`` and ``q k^T``: LRP-0 on both operands, each result halved.
- Residual ``a + b``: LRP-0 split, then each branch rescaled to carry its share ``|sum R_a| / (|sum R_a| +
  |sum R_b|)`` of the total; sums run over one sample (the authors' code runs one image per batch).
- Fork of the residual stream: the two branches' relevance added back.

The map is ``w (I + Ā^L) ... (I + Ā^s)`` read at the patch columns, ``Ā = mean_h(clamp(dy_c/dA ⊙ R^(A), min=0))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx.adapters import explaining, resolve_target
from lightning_vitx.adapters.capture import Target, check_inputs
from lightning_vitx.explainers._propagation import propagate_additive
from lightning_vitx.explainers._registry import ExplainerInfo, register
from lightning_vitx.explainers.base import Explainer

__all__ = ["TransformerAttribution"]


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)``, 0 where ``denominator`` is 0: the stabiliser of the authors' rules."""
    shifted = denominator + 1e-9
    shifted = shifted.masked_fill(shifted == 0, 1e-9)
    return (numerator / shifted).masked_fill(denominator == 0, 0.0)


def _linear_rule(relevance: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """Relevance at the input ``x`` of a Linear layer (alpha-beta with alpha 1, beta 0; bias ignored)."""
    weight = weight.float()
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    scaled = _safe_divide(relevance, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
    return x_pos * (scaled @ w_pos) + x_neg * (scaled @ w_neg)


def _matmul_rule(relevance: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """LRP-0 through ``a @ b`` to both operands, each halved (the attention module's rule for its two products)."""
    scaled = _safe_divide(relevance, a @ b)
    return a * (scaled @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ scaled) / 2


def _add_rule(relevance: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Split the relevance of ``a + b`` between the summands, rescaled per sample to their absolute shares."""
    scaled = _safe_divide(relevance, a + b)
    r_a, r_b = a * scaled, b * scaled
    dims = tuple(range(1, relevance.ndim))
    sum_a, sum_b = r_a.sum(dims, keepdim=True), r_b.sum(dims, keepdim=True)
    total, both = relevance.sum(dims, keepdim=True), sum_a.abs() + sum_b.abs()
    share_a, share_b = _safe_divide(sum_a.abs(), both) * total, _safe_divide(sum_b.abs(), both) * total
    return r_a * _safe_divide(share_a, sum_a), r_b * _safe_divide(share_b, sum_b)


def _fork_rule(first: Tensor, second: Tensor, x: Tensor) -> Tensor:
    """Relevance of ``x`` from the two branches it was copied into."""
    return x * _safe_divide(first + second, x)


@dataclass
class _Record:
    """What the rules read, recorded in the forward pass; ``blocks[l]["attention"]`` keeps its graph."""

    blocks: list[dict[str, Tensor]]  # per block: each sublayer's input, q, k, the qkv output, the branches
    heads: list[dict[str, Tensor]]  # per classifier head: its "input" and "output"
    tokens: Tensor | None = None  # final norm output, [B, N, D]


def _check_supported(model: Any) -> list[tuple[nn.Linear, int]]:
    """Raise a ``TypeError`` for what the rules don't cover; return the classifier heads and the rows they read."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block

    if model.global_pool != "token":
        raise TypeError(
            "transformer_attribution supports class-token ViTs (global_pool='token'), got "
            f"global_pool={model.global_pool!r}: a head that averages the patch tokens is not covered yet. "
            "Use a class-token model, or an explainer such as 'generic_attention'."
        )
    for index, block in enumerate(model.blocks):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if (
            type(block) is not Block
            or type(attn) is not Attention
            or cast(Any, attn).gate is not None
            or type(mlp) is not Mlp
        ):
            raise TypeError(
                f"transformer_attribution has rules for timm's pre-norm Block with Attention and Mlp; block {index} "
                f"is a {type(block).__name__} with {type(attn).__name__} and {type(mlp).__name__}"
            )
    heads = [(model.head, 0)]
    if getattr(model, "head_dist", None) is not None:
        heads.append((model.head_dist, 1))  # distilled DeiT: logits = (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    for head, _ in heads:
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"transformer_attribution needs a Linear classifier head, got {type(head).__name__}; "
                "create the model with num_classes > 0"
            )
    return heads


@contextlib.contextmanager
def _recording(model: Any, heads: list[tuple[nn.Linear, int]]) -> Iterator[_Record]:
    """Forward hooks that fill a ``_Record``; all removed on exit."""
    record = _Record(blocks=[{} for _ in model.blocks], heads=[{} for _ in heads])
    handles = []

    def keep(values: dict[str, Tensor], key: str, use_input: bool = False) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            values[key] = inputs[0] if use_input else output

        return hook

    try:
        for block, values in zip(model.blocks, record.blocks, strict=True):
            attn = block.attn
            handles += [
                block.register_forward_hook(keep(values, "input", use_input=True)),
                attn.qkv.register_forward_hook(keep(values, "qkv_input", use_input=True)),
                attn.qkv.register_forward_hook(keep(values, "qkv")),
                attn.q_norm.register_forward_hook(keep(values, "q")),
                attn.k_norm.register_forward_hook(keep(values, "k")),
                attn.attn_drop.register_forward_hook(keep(values, "attention")),
                attn.proj.register_forward_hook(keep(values, "proj_input", use_input=True)),
                block.drop_path1.register_forward_hook(keep(values, "attn_branch")),
                block.norm2.register_forward_hook(keep(values, "mid", use_input=True)),
                block.mlp.fc1.register_forward_hook(keep(values, "fc1_input", use_input=True)),
                block.mlp.fc2.register_forward_hook(keep(values, "fc2_input", use_input=True)),
                block.drop_path2.register_forward_hook(keep(values, "mlp_branch")),
            ]

        def keep_tokens(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            record.tokens = output

        handles.append(model.norm.register_forward_hook(keep_tokens))
        for index, (head, _) in enumerate(heads):
            handles += [
                head.register_forward_hook(keep(record.heads[index], "input", use_input=True)),
                head.register_forward_hook(keep(record.heads[index], "output")),
            ]
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _block_relevance(
    block: Any, recorded: dict[str, Tensor], relevance: Tensor, below: bool
) -> tuple[Tensor, Tensor | None]:
    """Relevance ``[B, N, D]`` at a block's output -> (``R^(A)`` ``[B, heads, N, N]``, relevance at its input).

    The input's relevance is computed only when ``below`` (a lower block still needs it).
    """
    record = {key: value.detach().float() for key, value in recorded.items()}
    attn = block.attn
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    residual, branch = _add_rule(relevance, record["mid"], record["mlp_branch"])
    branch = _linear_rule(branch, record["fc2_input"], block.mlp.fc2.weight)
    branch = _linear_rule(branch, record["fc1_input"], block.mlp.fc1.weight)
    relevance = _fork_rule(residual, branch, record["mid"])

    residual, branch = _add_rule(relevance, record["input"], record["attn_branch"])
    branch = _linear_rule(branch, record["proj_input"], attn.proj.weight)
    branch = branch.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # [B, heads, N, head_dim]
    qkv = record["qkv"].unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head_dim]
    attention_relevance, value_relevance = _matmul_rule(branch, record["attention"], qkv[2])
    if not below:
        return attention_relevance, None
    query_relevance, key_relevance = _matmul_rule(attention_relevance, record["q"], record["k"].transpose(-2, -1))
    stacked = torch.stack([query_relevance, key_relevance.transpose(-2, -1), value_relevance])
    branch = stacked.permute(1, 3, 0, 2, 4).flatten(2)  # [B, N, 3 * heads * head_dim], the qkv output's layout
    branch = _linear_rule(branch, record["qkv_input"], attn.qkv.weight)
    return attention_relevance, _fork_rule(residual, branch, record["input"])


def _top_relevance(record: _Record, heads: list[tuple[nn.Linear, int]], target: Tensor) -> Tensor:
    """Relevance ``[B, N, D]`` at the last block's output, from a one-hot relevance of 1 at the target logit."""
    if record.tokens is None or any(len(values) != 2 for values in record.heads):
        raise RuntimeError("the forward pass did not run through the model's final norm and classifier head")
    tokens = record.tokens.detach().float()
    outputs = [values["output"].detach().float() for values in record.heads]
    start = F.one_hot(target, outputs[0].shape[-1]).float()
    # Distilled DeiT averages two heads: the residual-add rule splits the logit's relevance between them.
    shares = [start] if len(heads) == 1 else list(_add_rule(start, outputs[0], outputs[1]))
    relevance = torch.zeros_like(tokens)
    for (head, row), share, values in zip(heads, shares, record.heads, strict=True):
        at_row = _linear_rule(share, values["input"].detach().float(), head.weight)
        relevance[:, row] += tokens[:, row] * _safe_divide(at_row, tokens[:, row])  # token selection (pooling)
    return relevance


@register(
    ExplainerInfo(
        name="transformer_attribution",
        needs_gradients=True,
        readout=False,
        families=("vit",),
        description="R <- R + mean_h((grad A * R^(A))^+) R, with R^(A) from LRP rules through every block",
        reference="Chefer, Gur & Wolf 2021, Transformer Interpretability Beyond Attention Visualization "
        "(arXiv 2012.09838)",
        signed=False,
    )
)
class TransformerAttribution(Explainer):
    """Chefer et al.'s transformer attribution: ``w (I + Ā^L) ... (I + Ā^s)`` at the patch columns.

    ``Ā^l = mean_h(clamp(dy_c/dA^l ⊙ R^(A,l), min=0))`` where ``R^(A,l)`` is the LRP relevance of block ``l``'s
    attention probabilities, propagated from a relevance of 1 at the target logit with the authors' rules (module
    docstring). Maps are non-negative and unnormalised.

    Args:
        model: a timm ViT or DeiT (distilled too, register tokens too) that reads its class token.
        start_layer: first block included in the rollout (0 = all, the authors' notebook; their evaluation
            scripts use 1); negative counts from the end.

    Differences from the reference code, which runs one image at a time: the residual rule's sums run over each
    sample, so a batch gives each image's single-image result. Distilled DeiT (not in the reference) splits the
    logit's relevance between its two heads with the residual rule and reads the mean of their two rows.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.explainers import create
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
        >>> maps = create("transformer_attribution", model)(torch.randn(2, 3, 224, 224), target=1)
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 14, 14]), True)
    """

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        super().__init__(model)
        self._heads = _check_supported(self.model)
        self.start_layer = self._block_index(start_layer, "start_layer")

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        dtype, device = check_inputs(self.adapter, images)
        layout = self.adapter.layout(images)
        geometries = self.adapter.attention_geometries(images)[self.start_layer :]
        model = cast(Any, self.model)
        autocast_off = torch.autocast(device_type=device.type, enabled=False)
        with explaining(self.adapter), torch.inference_mode(False), torch.enable_grad(), autocast_off:
            target_ids = resolve_target(target, images.shape[0], self.adapter.num_classes, images.device)
            with _recording(model, self._heads) as record:
                logits = model(images.detach().clone().to(dtype).requires_grad_(True))
            if target_ids is None:
                target_ids = logits.detach().argmax(dim=1)
            if any("attention" not in block for block in record.blocks):
                raise RuntimeError(
                    "a block's attention did not run through its attn_drop module. Is this a stock timm Attention?"
                )
            attentions = [block["attention"] for block in record.blocks[self.start_layer :]]
            grads = torch.autograd.grad(logits.float().gather(1, target_ids[:, None]).sum(), attentions)
            with torch.no_grad():
                relevance = _top_relevance(record, self._heads, target_ids)
                fused: list[Tensor] = []
                for index in reversed(range(self.start_layer, len(record.blocks))):
                    attention_relevance, below = _block_relevance(
                        model.blocks[index], record.blocks[index], relevance, below=index > self.start_layer
                    )
                    grad = grads[index - self.start_layer].float()
                    fused.insert(0, (grad * attention_relevance).clamp(min=0).mean(dim=1))
                    if below is not None:
                        relevance = below
                weights = layout.readout_weights(images.shape[0], device=device)
                return layout.patch_map(propagate_additive(weights, fused, geometries)).float()
