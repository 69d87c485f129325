"""Adapter for timm's Cait (CaiT): talking-heads self-attention over the patches, then class-attention blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vitx.adapters._dense import DenseAdapter
from lightning_vitx.adapters.base import register_adapter
from lightning_vitx.adapters.geometry import DenseAttention

__all__ = ["CaitAdapter"]


def _is_timm_cait(model: nn.Module) -> bool:
    try:
        from timm.models.cait import Cait
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, Cait)


@dataclass(frozen=True)
class _PatchSelfAttention(DenseAttention):
    """A self-attention block over the patches only (``[B, heads, P, P]``), laid out over ``[class, patches]``.

    The class token does not exist yet: its row and column are 0, so the rollout family's residual carries it
    unchanged (an identity), as it carries every token a block does not touch.
    """

    def captured_shape(self, batch_size: int) -> tuple[int, int]:
        return batch_size, self.num_tokens - 1

    def fold(self, captured: Tensor, batch_size: int) -> Tensor:
        return F.pad(captured, (1, 0, 1, 0))


@dataclass(frozen=True)
class _ClassAttention(DenseAttention):
    """A class-attention block: the class token's row over ``[class, patches]`` (``[B, heads, 1, N]``).

    It is row 0 of an ``N x N`` matrix whose patch rows are 0 (the block leaves the patch tokens as they are).
    """

    @property
    def captured_matrix(self) -> tuple[int, int]:
        return 1, self.num_tokens

    def fold(self, captured: Tensor, batch_size: int) -> Tensor:
        return F.pad(captured, (0, 0, 0, self.num_tokens - captured.shape[-2]))


_NO_LRP_RULE = "the LRP rules cover timm's Attention and ViT blocks, not CaiT's talking heads and class attention"
_NO_TOKEN_STATES = (
    "its class-attention blocks take the patches and the class token apart and update only the class token, and "
    "its layer scales are parameters (gamma_1, gamma_2), so the token states around each block are not read"
)


@register_adapter
class CaitAdapter(DenseAdapter):
    """Reads a timm ``Cait`` (``cait_*``): self-attention blocks, then class-attention blocks.

    The self-attention blocks (``model.blocks``) attend over the patch tokens only, with talking heads: the logits
    are mixed across heads before the softmax (``proj_l``) and the probabilities after it (``proj_w``, a linear map
    with bias, whose output is no longer row-stochastic). What is recorded is the softmax's output, per head, where
    ``proj_w`` takes it in; gradients of the target flow back to it through the mix. The class token joins in the
    class-attention blocks (``model.blocks_token_only``): each attends from the class token over
    ``[class, patches]`` and updates the class token only. The explainers see every block over the ``N`` tokens
    ``[class, patches]``: a self-attention block with a zero class row and column, a class-attention block with the
    class row only (``_PatchSelfAttention``, ``_ClassAttention``), so the rollout family's residual carries what a
    block leaves alone. The head reads the class token (``'token'``) or the mean of the patch tokens (``'avg'``).

    Which explainers work: ``raw_attention`` and ``gradcam`` (default: the last class-attention block's class row),
    ``rollout`` / ``gmar`` / ``generic_attention`` (the class rows carried down through the class-attention blocks,
    then through the self-attention blocks), ``patch_interaction`` (the patch-to-patch terms: the self-attention
    blocks) and ``legrad`` over the class-attention blocks, where the head reads the class token (as on Swin, the
    tokens of earlier blocks are not what the head reads). Refused at create: ``tokentm`` and ``layernorm_stats``,
    which read the token states around pre-norm ``x + f(norm(x))`` blocks (a class-attention block is not one), and
    the LRP family, which has no rules for talking heads and class attention.

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("cait_xxs24_224", pretrained=False, depth=2, depth_token_only=1)
        >>> adapter = CaitAdapter(model)
        >>> len(adapter.blocks()), adapter.layout(torch.zeros(1, 3, 224, 224)).num_tokens
        (3, 197)
    """

    family = "cait"
    description = "timm Cait (cait_*: talking-heads self-attention, then class attention; 'token' or 'avg' pool)"
    refusals: ClassVar[dict[str, str]] = {
        **{name: _NO_LRP_RULE for name in ("lrp", "partial_lrp", "transformer_attribution", "attnlrp")},
        **{name: _NO_TOKEN_STATES for name in ("tokentm", "layernorm_stats")},  # refused by check_capture_supported
    }
    token_states_refusal = _NO_TOKEN_STATES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for index, block in enumerate(self._model.blocks):
            if not isinstance(getattr(block.attn, "proj_w", None), nn.Linear):
                raise TypeError(
                    f"self-attention block {index} ({type(block.attn).__name__}) has no talking-heads proj_w, where "
                    "its attention probabilities are recorded; use timm's TalkingHeadAttn"
                )

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_timm_cait(model)

    @property
    def first_head_block(self) -> int:
        """The first block whose output the head reads (the first class-attention block): where legrad starts."""
        return len(self._model.blocks)

    def blocks(self) -> list[nn.Module]:
        return [*self._model.blocks, *self._model.blocks_token_only]

    def attention_modules(self) -> list[nn.Module]:
        blocks: list[Any] = self.blocks()
        return [block.attn for block in blocks]

    def attention_geometries(self, images: Tensor) -> list[DenseAttention]:
        layout = self.layout(images)
        patches = _PatchSelfAttention(layout.num_prefix_tokens, layout.grid_size)
        classes = _ClassAttention(layout.num_prefix_tokens, layout.grid_size)
        return [patches] * len(self._model.blocks) + [classes] * len(self._model.blocks_token_only)

    def attention_hooks(self, store: list[Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that append each block's attention probabilities in block order, in the graph of the forward.

        Self-attention: the softmax's output as ``proj_w`` takes it in (``[B, P, P, heads]``), handed on as a
        ``[B, heads, P, P]`` tensor's view, the same values, so the gradients reach the stored tensor. Class
        attention: the output of ``attn_drop`` (``[B, heads, 1, N]``).
        """

        def talking(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
            probabilities = inputs[0].permute(0, 3, 1, 2)  # [B, P, P, heads] -> [B, heads, P, P]
            store.append(probabilities)
            return (probabilities.permute(0, 2, 3, 1), *inputs[1:])

        def keep(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            store.append(output)

        handles = [block.attn.proj_w.register_forward_pre_hook(talking) for block in self._model.blocks]
        handles += [block.attn.attn_drop.register_forward_hook(keep) for block in self._model.blocks_token_only]
        return handles
