"""One LRP relevance pass over timm's pre-norm ViT ``Block``, shared by the LRP-based explainers.

A forward pass with hooks records what the rules read (each sublayer's input, ``q``, ``k``, the ``qkv`` output, the
attention probabilities ``A``, the two residual branches); then the relevance of a target logit is carried down the
blocks by the rules below, with ``s(a, b) = a / (b + 1e-9)`` and 0 where ``b = 0``. Two rule sets, as in Chefer et
al.'s code (METHODS.md §3.2, §3.4): ``CHEFER`` (``modules/layers_ours.py``, for ``transformer_attribution``) and
``BASELINE`` (``modules/layers_lrp.py``, for the paper's LRP baselines). They differ in two rules only:

- Linear (``alpha = 1``, bias ignored), ``z+ = x+ W+^T``, ``z- = x- W-^T``: ``CHEFER`` divides both sign terms by
  their sum, ``R_x = x+ (s(R, z+ + z-) W+) + x- (s(R, z+ + z-) W-)``; ``BASELINE`` divides each term by its own
  part, ``R_x = x+ (s(R, z+) W+) + x- (s(R, z-) W-)`` (each term carries ``R`` on its own, so the sum is not
  conservative).
- Residual ``a + b``: LRP-0 split ``R_a = a s(R, a + b)``, ``R_b = b s(R, a + b)``; ``CHEFER`` then rescales each
  branch to its share ``|sum R_a| / (|sum R_a| + |sum R_b|)`` of the total (sums over one sample), ``BASELINE``
  keeps the plain split.

Shared by both: GELU, LayerNorm, softmax, dropout, layer scale pass relevance unchanged; ``A v`` and ``q k^T`` take
LRP-0 on both operands, each result halved; a fork of the residual stream adds its two branches' relevance back;
the class-token selection is LRP-0.
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
from lightning_vitx.adapters.base import TokenLayout
from lightning_vitx.adapters.capture import Target, check_inputs
from lightning_vitx.explainers.base import Explainer

__all__ = [
    "BASELINE",
    "CHEFER",
    "BaselinePass",
    "Record",
    "Rules",
    "add_rule",
    "block_relevance",
    "check_supported",
    "fork_rule",
    "linear_rule",
    "matmul_rule",
    "recording",
    "safe_divide",
    "top_relevance",
]


@dataclass(frozen=True)
class Rules:
    """A rule set: which variant of the Linear and residual-add rules (module docstring) the pass uses.

    Args:
        joint_linear: one denominator ``z+ + z-`` for both sign terms of the Linear rule (else one per term).
        renormalised_add: rescale the residual split to the branches' absolute shares (else plain LRP-0).
    """

    joint_linear: bool
    renormalised_add: bool


CHEFER = Rules(joint_linear=True, renormalised_add=True)
BASELINE = Rules(joint_linear=False, renormalised_add=False)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)``, 0 where ``denominator`` is 0: the stabiliser of the authors' rules."""
    shifted = denominator + 1e-9
    shifted = shifted.masked_fill(shifted == 0, 1e-9)
    return (numerator / shifted).masked_fill(denominator == 0, 0.0)


def linear_rule(relevance: Tensor, x: Tensor, weight: Tensor, joint: bool = True) -> Tensor:
    """Relevance at the input ``x`` of a Linear layer (alpha-beta with alpha 1, beta 0; bias ignored).

    ``joint``: one denominator for both sign terms (``CHEFER``), else one per term (``BASELINE``).
    """
    weight = weight.float()
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    z_pos, z_neg = F.linear(x_pos, w_pos), F.linear(x_neg, w_neg)
    if joint:
        scaled_pos = scaled_neg = safe_divide(relevance, z_pos + z_neg)
    else:
        scaled_pos, scaled_neg = safe_divide(relevance, z_pos), safe_divide(relevance, z_neg)
    return x_pos * (scaled_pos @ w_pos) + x_neg * (scaled_neg @ w_neg)


def matmul_rule(relevance: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """LRP-0 through ``a @ b`` to both operands, each halved (the attention module's rule for its two products)."""
    scaled = safe_divide(relevance, a @ b)
    return a * (scaled @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ scaled) / 2


def add_rule(relevance: Tensor, a: Tensor, b: Tensor, renormalise: bool = True) -> tuple[Tensor, Tensor]:
    """Split the relevance of ``a + b`` between the summands (LRP-0).

    ``renormalise``: rescale each part, per sample, to its absolute share of the total (``CHEFER``).
    """
    scaled = safe_divide(relevance, a + b)
    r_a, r_b = a * scaled, b * scaled
    if not renormalise:
        return r_a, r_b
    dims = tuple(range(1, relevance.ndim))
    sum_a, sum_b = r_a.sum(dims, keepdim=True), r_b.sum(dims, keepdim=True)
    total, both = relevance.sum(dims, keepdim=True), sum_a.abs() + sum_b.abs()
    share_a, share_b = safe_divide(sum_a.abs(), both) * total, safe_divide(sum_b.abs(), both) * total
    return r_a * safe_divide(share_a, sum_a), r_b * safe_divide(share_b, sum_b)


def fork_rule(first: Tensor, second: Tensor, x: Tensor) -> Tensor:
    """Relevance of ``x`` from the two branches it was copied into."""
    return x * safe_divide(first + second, x)


@dataclass
class Record:
    """What the rules read, recorded in the forward pass; ``blocks[l]["attention"]`` keeps its graph."""

    blocks: list[dict[str, Tensor]]  # per block: each sublayer's input, q, k, the qkv output, the branches
    heads: list[dict[str, Tensor]]  # per classifier head: its "input" and "output"
    tokens: Tensor | None = None  # final norm output, [B, N, D]
    embeddings: Tensor | None = None  # patch embedding output, [B, gh * gw, D] (or [B, gh, gw, D])


def check_supported(model: Any, name: str) -> list[tuple[nn.Linear, int]]:
    """Raise a ``TypeError`` for what the rules don't cover; return the classifier heads and the rows they read."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block

    if model.global_pool != "token":
        raise TypeError(
            f"{name} supports class-token ViTs (global_pool='token'), got "
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
                f"{name} has rules for timm's pre-norm Block with Attention and Mlp; block {index} "
                f"is a {type(block).__name__} with {type(attn).__name__} and {type(mlp).__name__}"
            )
    heads = [(model.head, 0)]
    if getattr(model, "head_dist", None) is not None:
        heads.append((model.head_dist, 1))  # distilled DeiT: logits = (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    for head, _ in heads:
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"{name} needs a Linear classifier head, got {type(head).__name__}; "
                "create the model with num_classes > 0"
            )
    return heads


@contextlib.contextmanager
def recording(model: Any, heads: list[tuple[nn.Linear, int]]) -> Iterator[Record]:
    """Forward hooks that fill a ``Record``; all removed on exit."""
    record = Record(blocks=[{} for _ in model.blocks], heads=[{} for _ in heads])
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

        def keep_embeddings(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            record.embeddings = output

        handles.append(model.norm.register_forward_hook(keep_tokens))
        handles.append(model.patch_embed.register_forward_hook(keep_embeddings))
        for index, (head, _) in enumerate(heads):
            handles += [
                head.register_forward_hook(keep(record.heads[index], "input", use_input=True)),
                head.register_forward_hook(keep(record.heads[index], "output")),
            ]
        yield record
    finally:
        for handle in handles:
            handle.remove()


def block_relevance(
    block: Any, recorded: dict[str, Tensor], relevance: Tensor, below: bool, rules: Rules = CHEFER
) -> tuple[Tensor, Tensor | None]:
    """Relevance ``[B, N, D]`` at a block's output -> (``R^(A)`` ``[B, heads, N, N]``, relevance at its input).

    The input's relevance is computed only when ``below`` (a lower block still needs it).
    """
    record = {key: value.detach().float() for key, value in recorded.items()}
    attn = block.attn
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    joint, renormalise = rules.joint_linear, rules.renormalised_add
    residual, branch = add_rule(relevance, record["mid"], record["mlp_branch"], renormalise)
    branch = linear_rule(branch, record["fc2_input"], block.mlp.fc2.weight, joint)
    branch = linear_rule(branch, record["fc1_input"], block.mlp.fc1.weight, joint)
    relevance = fork_rule(residual, branch, record["mid"])

    residual, branch = add_rule(relevance, record["input"], record["attn_branch"], renormalise)
    branch = linear_rule(branch, record["proj_input"], attn.proj.weight, joint)
    branch = branch.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # [B, heads, N, head_dim]
    qkv = record["qkv"].unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head_dim]
    attention_relevance, value_relevance = matmul_rule(branch, record["attention"], qkv[2])
    if not below:
        return attention_relevance, None
    query_relevance, key_relevance = matmul_rule(attention_relevance, record["q"], record["k"].transpose(-2, -1))
    stacked = torch.stack([query_relevance, key_relevance.transpose(-2, -1), value_relevance])
    branch = stacked.permute(1, 3, 0, 2, 4).flatten(2)  # [B, N, 3 * heads * head_dim], the qkv output's layout
    branch = linear_rule(branch, record["qkv_input"], attn.qkv.weight, joint)
    return attention_relevance, fork_rule(residual, branch, record["input"])


def top_relevance(record: Record, heads: list[tuple[nn.Linear, int]], target: Tensor, rules: Rules = CHEFER) -> Tensor:
    """Relevance ``[B, N, D]`` at the last block's output, from a one-hot relevance of 1 at the target logit."""
    if record.tokens is None or any(len(values) != 2 for values in record.heads):
        raise RuntimeError("the forward pass did not run through the model's final norm and classifier head")
    tokens = record.tokens.detach().float()
    outputs = [values["output"].detach().float() for values in record.heads]
    start = F.one_hot(target, outputs[0].shape[-1]).float()
    # Distilled DeiT averages two heads: the residual-add rule splits the logit's relevance between them.
    shares = [start] if len(heads) == 1 else list(add_rule(start, outputs[0], outputs[1], rules.renormalised_add))
    relevance = torch.zeros_like(tokens)
    for (head, row), share, values in zip(heads, shares, record.heads, strict=True):
        at_row = linear_rule(share, values["input"].detach().float(), head.weight, rules.joint_linear)
        relevance[:, row] += tokens[:, row] * safe_divide(at_row, tokens[:, row])  # token selection (pooling)
    return relevance


class BaselinePass(Explainer):
    """An explainer on one recorded forward (no gradients) and the ``BASELINE`` rules from the target logit down.

    Subclasses implement ``read``: the map ``[B, gh, gw]`` from the record and the relevance at the head's input.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._heads = check_supported(self.model, self.info.name)

    def __call__(self, images: Tensor, target: Target = None) -> Tensor:
        dtype, device = check_inputs(self.adapter, images)
        layout = self.adapter.layout(images)
        model = cast(Any, self.model)
        with explaining(self.adapter), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            target_ids = resolve_target(target, images.shape[0], self.adapter.num_classes, images.device)
            with recording(model, self._heads) as record:
                logits = model(images.to(dtype))
            if target_ids is None:
                target_ids = logits.argmax(dim=1)
            relevance = top_relevance(record, self._heads, target_ids, BASELINE)
            return self.read(model, record, relevance, layout).float()

    def read(self, model: Any, record: Record, relevance: Tensor, layout: TokenLayout) -> Tensor:
        raise NotImplementedError
