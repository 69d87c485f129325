"""One LRP relevance pass over timm's ViT ``Block`` and Swin's ``SwinTransformerBlock``, for the LRP explainers.

A forward pass with hooks records what the rules (``rules``, looked up in a ``composites.Composite``) read: each
sublayer's input, the ``qkv`` output (and ViT's ``q``, ``k``), the attention probabilities ``A``, the two residual
branches, Swin's patch merging; then the relevance of a target logit is carried down the blocks. The head: a Linear
rule, then LRP-0 through the class-token selection (ViT, DeiT) or through the mean over the patch tokens
(``global_pool='avg'``, ``EndsRule.mean``); ``fc_norm``, the final norm and every other LayerNorm pass relevance
unchanged.

Swin has no public Chefer-style implementation; the rules are local to each operation, so it takes these:

- Cyclic shift, padding to whole windows, window partition and reverse (``WindowedAttention.to_windows`` /
  ``from_windows``) and patch merging's 2x2 gather are permutations or selections: relevance passes through them.
  Relevance that reaches a padding token is dropped: timm pads with zeros after ``norm1``, and those tokens are
  keys and queries inside their windows; patch merging pads odd grids with zeros that its LayerNorm makes nonzero.
  On padded grids the method's rules therefore conserve relevance only up to what the padding takes.
- The attention scores are ``q k^T * scale + relative position bias (+ shift mask)``. The bias and mask are treated
  like the Linear biases the rules ignore: all of the softmax input's relevance goes to the ``q k^T`` product (whose
  rule, as the authors', ignores the scale); ``q``, ``k`` are read from the ``qkv`` output.
- Patch merging: the gather (passes), its LayerNorm (passes), the bias-free Linear ``reduction`` (Linear rule).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import check_attention_recorded, detect
from lightning_vitx.adapters.geometry import WindowedAttention
from lightning_vitx.explainers.lrp.composites import Composite
from lightning_vitx.explainers.lrp.rules import EndsRule, Head, LinearRule, ProductRule, ResidualRule

__all__ = [
    "Record",
    "attention_relevances",
    "block_relevance",
    "merging_relevance",
    "recording",
    "top_relevance",
]


@dataclass
class Record:
    """What the rules read, recorded in the forward pass; ``blocks[l]["attention"]`` keeps its graph."""

    model: nn.Module
    blocks: list[dict[str, Tensor]]  # per block: each sublayer's input, q, k, the qkv output, the branches
    heads: list[dict[str, Tensor]]  # per classifier head: its "input" and "output"
    modules: list[nn.Module] = field(default_factory=list)  # the blocks, in order
    merges: dict[int, tuple[nn.Module, dict[str, Tensor]]] = field(default_factory=dict)  # Swin: first block -> merge
    num_prefix_tokens: int = 0
    tokens: Tensor | None = None  # final norm output, [B, N, D] (Swin: [B, H, W, D])
    embeddings: Tensor | None = None  # patch embedding output, [B, gh * gw, D] (or [B, gh, gw, D])
    pixels: Tensor | None = None  # the patch convolution's input, [B, 3, H, W] (padded when the embedding pads)
    sequence: Tensor | None = None  # ViT: the position embedding's sum (pos_drop's output), [B, N, D]


@contextlib.contextmanager
def recording(model: Any, heads: list[Head]) -> Iterator[Record]:
    """Forward hooks that fill a ``Record``; all removed on exit."""
    blocks: list[Any] = detect(model).blocks()
    record = Record(
        model=model,
        blocks=[{} for _ in blocks],
        heads=[{} for _ in heads],
        modules=blocks,
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
    )
    handles = []

    def keep(values: dict[str, Tensor], key: str, use_input: bool = False) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            values[key] = inputs[0] if use_input else output

        return hook

    def keep_on(module: nn.Module, values: dict[str, Tensor], **keys: bool) -> None:
        for key, use_input in keys.items():
            handles.append(module.register_forward_hook(keep(values, key, use_input)))

    try:
        for block, values in zip(blocks, record.blocks, strict=True):
            attn = block.attn
            keep_on(block, values, input=True, output=False)
            keep_on(attn.qkv, values, qkv_input=True, qkv=False)
            keep_on(attn.attn_drop, values, attention=False)
            keep_on(attn.proj, values, proj_input=True, proj=False)
            keep_on(block.drop_path1, values, attn_branch=False)
            keep_on(block.norm2, values, mid=True)
            keep_on(block.mlp.fc1, values, fc1_input=True, fc1=False)
            keep_on(block.mlp.fc2, values, fc2_input=True, fc2=False)
            keep_on(block.drop_path2, values, mlp_branch=False)
            if hasattr(attn, "q_norm"):  # ViT: q and k after their (optional) norms; Swin reads them off qkv
                keep_on(attn.q_norm, values, q=False)
                keep_on(attn.k_norm, values, k=False)
        first = 0
        for stage in getattr(model, "layers", []):
            if not isinstance(stage.downsample, nn.Identity):
                merged: dict[str, Tensor] = {}
                record.merges[first] = (stage.downsample, merged)
                keep_on(stage.downsample, merged, input=True)
                keep_on(stage.downsample.reduction, merged, reduction_input=True)
            first += len(stage.blocks)

        def keep_in_record(key: str, use_input: bool = False) -> Any:
            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                setattr(record, key, inputs[0] if use_input else output)

            return hook

        handles.append(model.norm.register_forward_hook(keep_in_record("tokens")))
        handles.append(model.patch_embed.register_forward_hook(keep_in_record("embeddings")))
        handles.append(model.patch_embed.proj.register_forward_hook(keep_in_record("pixels", use_input=True)))
        if isinstance(getattr(model, "pos_drop", None), nn.Module):  # ViT (runs only when it has a position embedding)
            handles.append(model.pos_drop.register_forward_hook(keep_in_record("sequence")))
        for (head, _), values in zip(heads, record.heads, strict=True):
            keep_on(head, values, input=True, output=False)
        yield record
    finally:
        for handle in handles:
            handle.remove()


def windows_of(block: Any, block_input: Tensor) -> WindowedAttention | None:
    """The window layout a Swin block ran its attention in (from its input ``[B, H, W, C]``); ``None`` for ViT."""
    if block_input.ndim != 4:
        return None
    grid = (int(block_input.shape[1]), int(block_input.shape[2]))
    return WindowedAttention(grid, tuple(block.window_size), tuple(block.shift_size))


def _to_windows(geometry: WindowedAttention, x: Tensor) -> Tensor:
    """``[B, H*W, C]`` -> ``[B * windows, w, C]`` in the block's shifted, padded window order (padding: 0)."""
    batch, _, channels = x.shape
    windows = geometry.to_windows(x.transpose(1, 2).reshape(batch * channels, -1))  # [B * C, windows, w]
    return windows.reshape(batch, channels, -1, geometry.window_area).permute(0, 2, 3, 1).flatten(0, 1)


def _from_windows(geometry: WindowedAttention, x: Tensor, batch: int) -> Tensor:
    """Inverse of ``_to_windows``: ``[B * windows, w, C]`` -> ``[B, H*W, C]`` (padding dropped, shift undone)."""
    channels = x.shape[-1]
    per_channel = x.reshape(batch, -1, geometry.window_area, channels).permute(0, 3, 1, 2).flatten(0, 1)
    return geometry.from_windows(per_channel).reshape(batch, channels, -1).transpose(1, 2)


def _linear(composite: Composite, linear: Any, record: dict[str, Tensor], key: str, relevance: Tensor) -> Tensor:
    """The Linear's rule through the layer recorded as ``key`` (its input ``<key>_input``, its output ``<key>``)."""
    rule: LinearRule = composite.rule(linear)
    return rule(relevance, record[f"{key}_input"], linear.weight, record[key], linear.bias)


MLP_CHUNK_ELEMENTS = 1 << 20  # the MLP rules run on token rows in chunks of about this many hidden-width elements


def _mlp_relevance(composite: Composite, mlp: Any, record: dict[str, Tensor], relevance: Tensor) -> Tensor:
    """The Linear rules through ``fc2`` then ``fc1``, on chunks of token rows: ``[B, N, D]`` -> ``[B, N, D]``.

    The rules act on each row alone, so chunking changes nothing but the size of the temporaries at the hidden
    width: a whole batch's (77 MB a tensor for swin_tiny's first stage at batch 16) are fresh pages each time, and
    on the CPU their page faults cost more than the arithmetic.
    """
    rows, width = relevance.shape[:-1].numel(), relevance.shape[-1]
    keys = ("fc2_input", "fc2", "fc1_input", "fc1")
    flat = {key: record[key].reshape(rows, -1) for key in keys}
    step = max(1, MLP_CHUNK_ELEMENTS // flat["fc2_input"].shape[-1])
    relevance, out = relevance.reshape(rows, width), torch.empty_like(flat["fc1_input"])
    for start in range(0, rows, step):
        part = {key: value[start : start + step] for key, value in flat.items()}
        hidden = _linear(composite, mlp.fc2, part, "fc2", relevance[start : start + step])
        out[start : start + step] = _linear(composite, mlp.fc1, part, "fc1", hidden)
    return out.reshape(record["fc1_input"].shape)


def block_relevance(
    block: Any, recorded: dict[str, Tensor], relevance: Tensor, below: bool, composite: Composite
) -> tuple[Tensor, Tensor | None]:
    """Relevance ``[B, N, D]`` at a block's output -> (``R^(A)``, relevance ``[B, N, D]`` at its input).

    ``R^(A)`` has the attention's recorded shape: ``[B, heads, N, N]`` (ViT), ``[B * windows, heads, w, w]`` (Swin,
    tokens in the ``[B, H*W, D]`` row-major order). The input's relevance is computed only when ``below``.
    """
    record = {key: value.detach().float() for key, value in recorded.items()}
    attn = block.attn
    residual_rule: ResidualRule = composite.rule(block)
    product: ProductRule = composite.rule(attn)
    # each residual add's output is recorded: the block's output, and norm2's input (``mid``)
    output = record["output"].flatten(1, -2)
    residual, branch = residual_rule.split(relevance, record["mid"], record["mlp_branch"], total=output)
    relevance = residual_rule.fork(residual, _mlp_relevance(composite, block.mlp, record, branch), record["mid"])

    inputs, windows = record["input"].flatten(1, -2), windows_of(block, record["input"])
    residual, branch = residual_rule.split(relevance, inputs, record["attn_branch"].flatten(1, -2), record["mid"])
    if windows is not None:
        branch = _to_windows(windows, branch)
    branch = _linear(composite, attn.proj, record, "proj", branch)
    heads = int(attn.num_heads)
    head_dim = branch.shape[-1] // heads
    branch = branch.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # [rows, heads, n, head_dim]
    qkv = record["qkv"].unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)  # [3, rows, heads, n, head_dim]
    # the heads' output A v, as the module passed it to proj (unless a norm sits between them)
    heads_output = None
    if isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
        heads_output = record["proj_input"].unflatten(-1, (heads, head_dim)).transpose(1, 2)
    attention_relevance, value_relevance = product(branch, record["attention"], qkv[2], heads_output)
    if not below:
        return attention_relevance, None
    q, k = record.get("q", qkv[0]), record.get("k", qkv[1])
    query_relevance, key_relevance = product(attention_relevance, q, k.transpose(-2, -1))
    branch = torch.empty_like(record["qkv"])  # [rows, n, 3 * heads * head_dim], the qkv output's layout
    for part, part_relevance in zip(
        branch.unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4),
        (query_relevance, key_relevance.transpose(-2, -1), value_relevance),
        strict=True,
    ):
        part.copy_(part_relevance)
    branch = _linear(composite, attn.qkv, record, "qkv", branch)
    if windows is not None:
        branch = _from_windows(windows, branch, inputs.shape[0])
    return attention_relevance, residual_rule.fork(residual, branch, inputs)


def merging_relevance(merging: Any, recorded: dict[str, Tensor], relevance: Tensor, composite: Composite) -> Tensor:
    """Relevance ``[B, H/2 * W/2, 2C]`` at a patch merging's output -> ``[B, H * W, C]`` at its input.

    The Linear rule through ``reduction``; its LayerNorm passes relevance; the 2x2 gather is undone (timm's order of
    the four children in the channels: ``(0, 0), (1, 0), (0, 1), (1, 1)`` as (row, column) offsets) and the rows
    and columns padded onto odd grids are dropped.
    """
    gathered = recorded["reduction_input"].detach().float()  # [B, H/2, W/2, 4C]
    batch, height, width, channels = recorded["input"].shape
    reduction: LinearRule = composite.rule(merging.reduction)
    at_gather = reduction(relevance.reshape(*gathered.shape[:-1], -1), gathered, merging.reduction.weight)
    grid = at_gather.unflatten(-1, (2, 2, channels)).permute(0, 1, 4, 2, 3, 5)  # [B, H/2, dy, W/2, dx, C]
    grid = grid.reshape(batch, 2 * gathered.shape[1], 2 * gathered.shape[2], channels)[:, :height, :width]
    return grid.reshape(batch, height * width, channels)


def attention_relevances(
    record: Record, relevance: Tensor, composite: Composite, lowest: int = 0, to_input: bool = False
) -> tuple[list[Tensor], Tensor | None]:
    """From the relevance at the last block's output, down the blocks (and Swin's mergings) to block ``lowest``.

    Returns each block's ``R^(A)`` from ``lowest`` up (bottom-up, in the attention's recorded shape), and the
    relevance ``[B, N, D]`` at block ``lowest``'s input when ``to_input`` (else ``None``). Consumes the record:
    each block's entries (but its ``input``) and each merging's are released once their relevance is computed, so
    the next block's temporaries reuse that memory instead of fresh pages.
    """
    check_attention_recorded(sum("attention" in block for block in record.blocks), len(record.blocks))
    found: list[Tensor] = []
    for index in reversed(range(lowest, len(record.blocks))):
        below = index > lowest or to_input
        attention, under = block_relevance(record.modules[index], record.blocks[index], relevance, below, composite)
        found.insert(0, attention)
        # release what the block recorded (its input stays for the caller): the next block's temporaries reuse it
        record.blocks[index] = {"input": record.blocks[index]["input"]}
        if under is not None:
            relevance = under
        if index > lowest and index in record.merges:
            merging, merged = record.merges.pop(index)
            relevance = merging_relevance(merging, merged, relevance, composite)
    return found, (relevance if to_input else None)


def top_relevance(record: Record, heads: list[Head], target: Tensor, composite: Composite) -> Tensor:
    """Relevance ``[B, N, D]`` at the last block's output, from a one-hot relevance of 1 at the target logit."""
    if record.tokens is None or any(len(values) != 2 for values in record.heads):
        raise RuntimeError("the forward pass did not run through the model's final norm and classifier head")
    ends: EndsRule = composite.rule(record.model)
    tokens = record.tokens.detach().float().flatten(1, -2)  # Swin's [B, H, W, D] -> [B, H*W, D]
    outputs = [values["output"].detach().float() for values in record.heads]
    start = torch.nn.functional.one_hot(target, outputs[0].shape[-1]).float()
    # Distilled DeiT averages two heads: the residual rule splits the logit's relevance between them.
    shares = [start] if ends.average is None else list(ends.average.split(start, outputs[0], outputs[1]))
    relevance = torch.zeros_like(tokens)
    prefix = record.num_prefix_tokens
    for (head, row), share, values in zip(heads, shares, record.heads, strict=True):
        head_rule: LinearRule = composite.rule(head)
        at_head = head_rule(share, values["input"].detach().float(), head.weight)
        if row is None:  # the mean over the patch tokens (fc_norm after it passes relevance)
            relevance[:, prefix:] += ends.mean(at_head, tokens[:, prefix:])
        else:  # token selection
            relevance[:, row] += ends.select(at_head, tokens[:, row])
    return relevance
