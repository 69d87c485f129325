"""One forward and at most one backward pass that records what the attention-family explainers read.

Recorded per block ``l``: the attention probabilities ``A^l`` (after softmax; ``[B, heads, N, N]`` for ViT,
``[B, heads, windows, w, w]`` for Swin's window attention, see ``Capture.geometries``), optionally
their gradients ``dy_c/dA^l`` with respect to the target logits (or, with ``objective="probability"``, the target's
softmax probability), the per-head attention outputs (input of the output projection), the token states around
each block and sublayer, and the per-token statistics of the LayerNorms that feed attention, MLP and patch merging.

Gradients come from ``torch.autograd.grad`` on the captured tensors, so no parameter's ``.grad`` is touched.
The model is put in eval mode with timm's fused attention switched off for the pass only; everything is
restored afterwards, also when the pass raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from lightning_vitx._checks import check_choice
from lightning_vitx.adapters.base import Adapter, TokenLayout, qualified_name
from lightning_vitx.adapters.forward import Target, TargetFn, explaining_forward
from lightning_vitx.adapters.geometry import AttentionGeometry

__all__ = [
    "Capture",
    "CaptureNeeds",
    "TokenStats",
    "capture_pass",
    "check_attention_recorded",
    "check_capture_supported",
]
Objective = Literal["logit", "probability"]
OBJECTIVES = ("logit", "probability")


@dataclass(frozen=True)
class CaptureNeeds:
    """What a capture pass must record beyond the attention probabilities (always recorded).

    ``objective`` is what the gradients differentiate: the target's logit (every explainer's convention) or its
    softmax probability; it matters only with ``gradients``. Two needs that both ask for gradients of different
    objectives do not combine (one pass has one backward): ``|`` raises, and ``ExplainerGroup`` runs one pass
    per objective.
    """

    gradients: bool = False
    token_states: bool = False
    head_outputs: bool = False
    norm_stats: bool = False
    objective: Objective = "logit"

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, OBJECTIVES)

    def __or__(self, other: CaptureNeeds) -> CaptureNeeds:
        objective = other.objective if other.gradients and not self.gradients else self.objective
        if self.gradients and other.gradients and self.objective != other.objective:
            raise ValueError(
                f"one capture pass differentiates one objective, got {self.objective!r} and {other.objective!r}; "
                "capture them in separate passes"
            )
        return CaptureNeeds(
            gradients=self.gradients or other.gradients,
            token_states=self.token_states or other.token_states,
            head_outputs=self.head_outputs or other.head_outputs,
            objective=objective,
            norm_stats=self.norm_stats or other.norm_stats,
        )


class TokenStats(NamedTuple):
    """Per-token statistics of a LayerNorm's input ``x [B, ..., C]``, each ``[B, N]`` (tokens in row-major order).

    ``mean = x.mean(-1)``; ``std = sqrt(x.var(-1, unbiased=False) + eps)``, the divisor the norm applies, so a
    token's normalised output, and everything downstream of it, scales with ``1 / std``.
    """

    mean: Tensor
    std: Tensor


@dataclass
class Capture:
    """The record of one pass over a batch. All tensors are detached, float32, on the input's device.

    Attributes:
        layout: token layout of this input (prefix tokens, patch grid, readout rows).
        logits: ``[B, num_classes]``.
        target: ``[B]`` class explained per sample; ``-1`` for every sample when a callable target (``target_fn``)
            chose the scalar.
        attentions: per block, ``[B, heads, N, N]``; row = query token, column = key token, rows sum to 1.
            Window attention (Swin): ``[B, heads, windows, w, w]``, per window.
        geometries: per block, how its attention connects tokens; ``geometries[l].times(v, fused)`` multiplies a
            row vector over the block's tokens by its head-fused attention.
        attention_grads: per block, ``d(sum_b logits[b, target[b]]) / dA``, same shapes; ``None`` unless asked.
            With ``objective="probability"``: ``d(sum_b softmax(logits)[b, target[b]]) / dA``; with a callable
            target: ``d(sum_b target_fn(logits)[b]) / dA``.
        head_outputs: per block, ``[B, heads, N, head_dim]`` attention output before the output projection
            (``[B, heads, windows, w, head_dim]`` for window attention).
        head_output_grads: their gradients with respect to the target logits.
        token_states: per block, a dict with ``input``, ``norm1``, ``attn`` (attention branch after layer scale),
            ``mid`` (= input + attn), ``norm2``, ``mlp`` (MLP branch after layer scale) and ``output``,
            each ``[B, N, D]`` (Swin: the block's ``H x W`` grid flattened row-major, as the geometries order it).
        objective: what the gradients differentiate, ``"logit"`` or ``"probability"``.
        norm_stats: per block, ``TokenStats`` of the LayerNorms over the block's tokens: ``norm1`` (feeds the
            attention), ``norm2`` (feeds the MLP) and, for the first block after a Swin patch merging, ``merge``
            (the merging norm, over the merged tokens the block receives).
        target_fn: the callable target ``f(outputs) -> Tensor[B]`` the pass explained, or ``None`` for classes.
        readout_attention: for an attention-pool head (``layout.readout == "map"``), the pool's attention of its
            query over the last block's tokens, ``[B, heads, N]`` (0 on tokens the pool does not read); else ``None``.
    """

    layout: TokenLayout
    logits: Tensor
    target: Tensor
    attentions: list[Tensor]
    geometries: list[AttentionGeometry]
    attention_grads: list[Tensor] | None = None
    head_outputs: list[Tensor] | None = None
    head_output_grads: list[Tensor] | None = None
    token_states: list[dict[str, Tensor]] | None = None
    objective: Objective = "logit"
    norm_stats: list[dict[str, TokenStats]] | None = None
    target_fn: TargetFn | None = None
    readout_attention: Tensor | None = None
    _gradient_weighted: list[Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return int(self.logits.shape[0])

    def readout_weights(self, block: int = -1) -> Tensor:
        """``[B, N]`` weights of the token rows the classifier head reads, over block ``block``'s tokens.

        An attention-pool head reads the tokens by its attention: the pool's row, mean over heads, per sample.
        """
        if self.layout.readout == "map":
            if self.readout_attention is None:
                raise ValueError("an attention-pool head's readout row was not recorded (Capture.readout_attention)")
            return self.readout_attention.mean(dim=1)
        grid = self.geometries[block].grid_size
        return self.layout.readout_weights(self.batch_size, device=self.logits.device, grid_size=grid)

    def patch_map(self, token_scores: Tensor, block: int = 0) -> Tensor:
        """``[B, N_block]`` scores over block ``block``'s tokens -> ``[B, gh, gw]`` at the patch grid.

        Prefix columns are dropped; scores on a merged (coarser) grid are spread back to the patch grid.
        """
        return self.layout.patch_map(token_scores, self.geometries[block].grid_size)

    def require_gradients(self, who: str) -> list[Tensor]:
        if self.attention_grads is None:
            raise ValueError(f"{who} needs attention gradients: capture with CaptureNeeds(gradients=True)")
        return self.attention_grads

    def gradient_weighted_attention(self, who: str) -> list[Tensor]:
        """Per block, ``mean_h(clamp(dy_c/dA ⊙ A, min=0))`` (Chefer et al. 2021b's ``Ā``) in the block's layout.

        Computed once per record and shared by the explainers of a group that read it (``generic_attention``,
        ``layernorm_stats``); callers must not modify the tensors in place.
        """
        if self._gradient_weighted is None:
            pairs = zip(self.attentions, self.require_gradients(who), strict=True)
            self._gradient_weighted = [(grad * attention).clamp(min=0).mean(dim=1) for attention, grad in pairs]
        return self._gradient_weighted

    def require_token_states(self, who: str) -> list[dict[str, Tensor]]:
        if self.token_states is None:
            raise ValueError(f"{who} needs token states: capture with CaptureNeeds(token_states=True)")
        return self.token_states


def _register_hooks(
    adapter: Adapter,
    needs: CaptureNeeds,
    attentions: list[Tensor],
    head_outputs: list[Tensor],
    token_states: list[dict[str, Tensor]],
    norm_stats: list[dict[str, TokenStats]],
) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []

    def keep_output(store: list[Tensor]) -> Any:
        return lambda module, inputs, output: store.append(output)

    attention: list[Any] = adapter.attention_modules()
    blocks: list[Any] = adapter.blocks()
    # the per-head attention outputs enter the output projection, unless the adapter names another module (EVA's
    # inner norm and gate sit between them)
    head_inputs: list[Any] = getattr(adapter, "head_output_modules", lambda: [a.proj for a in attention])()
    # the probabilities pass through attn_drop, unless the adapter records them elsewhere (CaiT's talking heads mix
    # them after the softmax: its adapter records the softmax's output)
    recorder = getattr(adapter, "attention_hooks", None)
    if recorder is not None:
        handles += recorder(attentions)
    for attn, head_input in zip(attention, head_inputs, strict=True):
        if recorder is None:
            handles.append(attn.attn_drop.register_forward_hook(keep_output(attentions)))
        if needs.head_outputs:
            handles.append(head_input.register_forward_pre_hook(lambda module, inputs: head_outputs.append(inputs[0])))
    if needs.token_states:
        for index, block in enumerate(blocks):
            # timm's ViT Block scales each branch (ls1, ls2); Swin's block has no layer scale: its branches end in
            # drop_path1 / drop_path2 (identities in eval mode).
            branches = ("ls1", "ls2") if hasattr(block, "ls1") else ("drop_path1", "drop_path2")
            missing = [name for name in ("norm1", *branches, "norm2") if not hasattr(block, name)]
            if missing:
                raise ValueError(
                    f"token states need pre-norm timm Blocks; block {index} ({type(block).__name__}) lacks {missing}"
                )
            states: dict[str, Tensor] = {}
            token_states.append(states)

            def keep(key: str, states: dict[str, Tensor] = states, use_input: bool = False) -> Any:
                def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                    states[key] = inputs[0] if use_input else output

                return hook

            handles += [
                block.register_forward_hook(keep("input", use_input=True)),
                block.register_forward_hook(keep("output")),
                block.norm1.register_forward_hook(keep("norm1")),
                getattr(block, branches[0]).register_forward_hook(keep("attn")),
                block.norm2.register_forward_hook(keep("mid", use_input=True)),
                block.norm2.register_forward_hook(keep("norm2")),
                getattr(block, branches[1]).register_forward_hook(keep("mlp")),
            ]
    if needs.norm_stats:
        handles += _register_norm_hooks(adapter, norm_stats)
    return handles


def check_capture_supported(adapter: Adapter, needs: CaptureNeeds, who: str) -> None:
    """Raise when the model's blocks cannot give what ``needs`` asks for; explainers call it at ``create``.

    Token states and LayerNorm statistics are read around pre-norm blocks (``x + f(norm(x))``); the statistics
    also need ``norm1`` and ``norm2`` to be LayerNorms. Post-norm blocks raise a ``TypeError``, other norms a
    ``ValueError``; ``who`` names the explainer in the message.
    """
    if not (needs.token_states or needs.norm_stats):
        return
    blocks: list[Any] = adapter.blocks()
    model = qualified_name(adapter.model)
    reason = getattr(adapter, "token_states_refusal", None)  # an adapter whose blocks have no token states to read
    if reason:
        raise TypeError(f"{who} cannot explain this {model}: {reason}. Use 'generic_attention' or 'rollout' for it.")
    if not getattr(adapter, "pre_norm", True):
        raise TypeError(
            f"{who} cannot explain this {model}: its blocks ({type(blocks[0]).__name__}) normalise each branch's "
            f"output (post-norm), and {who} reads the token states around pre-norm blocks. Use 'generic_attention' "
            "or 'rollout' for this model."
        )
    if needs.norm_stats:
        for index, block in enumerate(blocks):
            norms = {key: getattr(block, key, None) for key in ("norm1", "norm2")}
            missing = [key for key, norm in norms.items() if not isinstance(norm, nn.LayerNorm)]
            if missing:
                found = ", ".join(type(norms[key]).__name__ for key in missing)
                raise ValueError(
                    f"{who} cannot explain this {model}: it reads the statistics of LayerNorm norm1 and norm2 in "
                    f"every block, block {index} ({type(block).__name__}) has no LayerNorm {missing} ({found}). "
                    "Use 'generic_attention' for this model."
                )


def _norm_statistics(module: nn.Module, x: Tensor) -> TokenStats:
    eps = float(getattr(module, "eps", 0.0))
    x = x.detach().float().flatten(1, -2)  # [B, ..., C] -> [B, N, C]
    return TokenStats(x.mean(dim=-1), (x.var(dim=-1, unbiased=False) + eps).sqrt())


def _register_norm_hooks(adapter: Adapter, norm_stats: list[dict[str, TokenStats]]) -> list[Any]:
    blocks: list[Any] = adapter.blocks()
    merging: dict[int, nn.Module] = getattr(adapter, "merging_norms", dict)()
    handles = []
    for index, block in enumerate(blocks):
        norms = {key: getattr(block, key, None) for key in ("norm1", "norm2")}
        missing = [key for key, norm in norms.items() if not isinstance(norm, nn.LayerNorm)]
        if missing:
            raise ValueError(
                f"LayerNorm statistics need pre-norm blocks with LayerNorm norm1 and norm2; block {index} "
                f"({type(block).__name__}) has no LayerNorm {missing}"
            )
        if index in merging:
            norms["merge"] = merging[index]
        stats: dict[str, TokenStats] = {}
        norm_stats.append(stats)
        for key, norm in norms.items():

            def hook(module: nn.Module, inputs: tuple[Tensor, ...], key: str = key, stats: dict = stats) -> None:
                stats[key] = _norm_statistics(module, inputs[0])

            handles.append(cast(nn.Module, norm).register_forward_pre_hook(hook))
    return handles


def _tokens(state: Tensor) -> Tensor:
    """A recorded token state, detached, float32, as ``[B, N, D]`` (Swin's ``[B, H, W, D]`` flattened row-major)."""
    state = state.detach().float()
    return state.flatten(1, -2) if state.ndim > 3 else state


def _check_attention_shapes(attentions: list[Tensor], geometries: list[AttentionGeometry], batch: int) -> None:
    for index, (attention, geometry) in enumerate(zip(attentions, geometries, strict=True)):
        rows, tokens = geometry.captured_shape(batch)
        matrix = getattr(geometry, "captured_matrix", (tokens, tokens))  # (queries, keys) when not square (CaiT)
        if attention.shape[0] != rows or tuple(attention.shape[-2:]) != tuple(matrix):
            raise RuntimeError(
                f"block {index} recorded attention of shape {list(attention.shape)}, expected [{rows}, heads, "
                f"{tokens}, {tokens}] for {geometry}; the model's layout differs from what its adapter reads"
            )


def check_attention_recorded(recorded: int, blocks: int) -> None:
    """A ``RuntimeError`` when fewer blocks recorded their attention probabilities than the model has.

    The one guard of every pass that reads attention through timm's ``attn_drop`` module.
    """
    if recorded != blocks:
        raise RuntimeError(
            f"recorded {recorded} attention maps for {blocks} blocks: the model's attention did not run through "
            "its attn_drop module. Is this a stock timm Attention?"
        )


def capture_pass(adapter: Adapter, images: Tensor, target: Target = None, needs: CaptureNeeds | None = None) -> Capture:
    """Run the model once over ``images`` (and once backward when ``needs.gradients``) and record the pass.

    Works under ``torch.inference_mode()``, ``torch.no_grad()`` and autocast: it leaves inference mode, clones
    the inputs, switches autocast off and computes in the model's own dtype, so maps are reproducible.

    Args:
        adapter: from ``lightning_vitx.adapters.detect(model)``.
        images: ``[B, 3, H, W]`` as the model takes them, on the model's device.
        target: ``None`` (the predicted class), an ``int`` for all samples, ``LongTensor[B]``, or a callable
            ``f(logits) -> Tensor[B]``: the scalar whose gradients are recorded.
        needs: what to record beyond the attention probabilities, and what the gradients differentiate.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.adapters import detect
        >>> adapter = detect(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5))
        >>> record = capture_pass(adapter, torch.randn(2, 3, 224, 224), needs=CaptureNeeds(gradients=True))
        >>> len(record.attentions), tuple(record.attention_grads[0].shape)
        (12, (2, 3, 197, 197))
    """
    needs = needs or CaptureNeeds()
    check_capture_supported(adapter, needs, "the capture pass")
    attentions: list[Tensor] = []
    head_outputs: list[Tensor] = []
    token_states: list[dict[str, Tensor]] = []
    norm_stats: list[dict[str, TokenStats]] = []
    readouts: list[Tensor] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    # gradients reach the attention through the inputs, also when the parameters are frozen
    with explaining_forward(
        adapter, images, target, needs.gradients, input_grad=needs.gradients, callable_target=True
    ) as call:
        layout = adapter.layout(images)
        geometries = adapter.attention_geometries(images)
        try:
            handles = _register_hooks(adapter, needs, attentions, head_outputs, token_states, norm_stats)
            if layout.readout == "map":  # an attention-pool head: its adapter records the pool's attention
                handles += cast(Any, adapter).readout_attention_hooks(readouts)
            logits = call.forward()
        finally:
            for handle in handles:
                handle.remove()
        check_attention_recorded(len(attentions), len(adapter.blocks()))
        batch = images.shape[0]
        target_ids = call.target if call.target is not None else torch.full((batch,), -1, device=logits.device)
        _check_attention_shapes(attentions, geometries, batch)

        def per_sample(tensors: list[Tensor]) -> list[Tensor]:
            return [g.fold(t.detach().float(), batch) for t, g in zip(tensors, geometries, strict=True)]

        def split_heads(tensors: list[Tensor]) -> list[Tensor]:
            heads = [int(cast(Any, attn).num_heads) for attn in adapter.attention_modules()]
            split = [t.unflatten(-1, (h, -1)).transpose(1, 2) for t, h in zip(tensors, heads, strict=True)]
            return per_sample(split)

        record = Capture(
            layout=layout,
            logits=logits.detach().float(),
            target=target_ids,
            attentions=per_sample(attentions),
            geometries=geometries,
            objective=needs.objective,
            target_fn=call.target_fn,
        )
        if layout.readout == "map":
            if len(readouts) != 1:
                raise RuntimeError(f"recorded the attention pool {len(readouts)} times in one forward, expected once")
            skipped = layout.num_tokens - readouts[0].shape[-1]  # the prefix tokens, when the pool skips them
            record.readout_attention = torch.nn.functional.pad(readouts[0], (skipped, 0))
        if needs.head_outputs:
            record.head_outputs = split_heads(head_outputs)
        if needs.gradients:
            score = call.score(logits, needs.objective).sum()
            wrt = attentions + (head_outputs if needs.head_outputs else [])
            grads = torch.autograd.grad(score, wrt)
            record.attention_grads = per_sample(list(grads[: len(attentions)]))
            if needs.head_outputs:
                record.head_output_grads = split_heads(list(grads[len(attentions) :]))
        if needs.token_states:
            record.token_states = [{k: _tokens(v) for k, v in states.items()} for states in token_states]
        if needs.norm_stats:
            record.norm_stats = norm_stats
    return record
