"""AttnLRP and CP-LRP as one modified backward over a stock timm model (Gradient x Input form).

Each rule is an object (``GammaRule``, ``IdentityRule``, ``LayerNormRule``, ``AttentionRule``, ``GRADIENT``) that
installs forward hooks on its module; ``composites.modified_backward`` says which module takes which. A hook returns
the module's own output, unchanged, from a small autograd function (``autograd_rules``) whose backward is the
rule's: with relevance ``R = x * dy/dx`` at every tensor (Achtibat et al. 2024,
``lxt.efficient``; docs/methods.md §9.1) the rules are:

- element-wise activations (GELU): identity rule, ``R_in = R_out``: gradient ``f(x) / x``.
- LayerNorm: the standard deviation is a constant, ``y = (x - mean(x)) / stopgrad(std) * w + b`` (epsilon rule on
  the centring; ``b`` keeps its share): gradient ``(g w - mean(g w)) / std``.
- attention, ``attention_rule="attnlrp"``: the uniform rule on both products, ``A v`` (half to ``A``, half to ``v``:
  the gradient at the output of the heads is halved) and ``q k^T`` (half to each: the gradient at ``q`` and ``k``
  halved again); the softmax takes the plain gradient, which in this form is AttnLRP's softmax rule
  ``R_in = x (R_out - s sum(R_out))`` (the rest is the bias term of its Taylor expansion; relative position
  biases keep their share of its input's relevance).
- attention, ``attention_rule="cp"`` (Ali et al. 2022): the attention probabilities detached (constant weights), so
  the relevance goes through the values only and the backward skips the softmax and ``q k^T``.
- Linear layers and the patch-embedding convolution: the generalised gamma rule (zennit's ``Gamma``, which lxt's
  ViT recipe and hilrp use): where ``z > 0`` the relevance goes out in proportion to ``x+ (W + g W+) + x- (W + g
  W-)`` (bias ``b + g b+``), where ``z < 0`` to ``x+ (W + g W-) + x- (W + g W+)`` (bias ``b + g b-``); ``g = 0`` is
  the epsilon rule, i.e. the plain gradient, and installs no hook.
- everything else (residual sums, pooling, reshapes, Swin's windows, shifts, padding and patch merging) takes the
  plain gradient: sums split the relevance in proportion to their terms, permutations carry it along.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_vitx.explainers.lrp.autograd_rules import (
    Scaling,
    gamma_conv,
    gamma_linear,
    identity_rule,
    layer_norm_rule,
    scale_gradient,
)

if TYPE_CHECKING:
    from lightning_vitx.explainers.lrp.composites import Composite

__all__ = [
    "GRADIENT",
    "AttentionRule",
    "AttentionRuleName",
    "GammaRule",
    "GradientRule",
    "IdentityRule",
    "LayerNormRule",
    "fused_attention",
    "lrp_rules",
]

AttentionRuleName = Literal["attnlrp", "cp"]


Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]


def _linear_hook(rule: Scaling) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        linear = cast(nn.Linear, module)
        return gamma_linear(
            inputs[0], output, linear.weight, linear.bias, rule.gamma, rule.scale, rule.rows, rule.outputs
        )

    return hook


def _conv_hook(gamma: float) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return gamma_conv(inputs[0], output, cast(nn.Conv2d, module), gamma)

    return hook


def _identity_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return identity_rule(inputs[0], output)


def _layer_norm_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return layer_norm_rule(inputs[0], output, cast(nn.LayerNorm, module))


def _detach_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output.detach()  # CP-LRP: the attention probabilities are constant weights


def _scale_hook(scale: float | Tensor) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return scale_gradient(output, scale)

    return hook


def _halve_pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (scale_gradient(inputs[0], 0.5), *inputs[1:])  # uniform rule on A v


def _query_key_halves(qkv: nn.Linear) -> Tensor:
    """``[1/2 ... 1/2 1 ... 1]``: the uniform rule on ``q k^T``, a half at each of ``q`` and ``k`` (not ``v``)."""
    width = qkv.out_features // 3
    rows = torch.ones(qkv.out_features, dtype=qkv.weight.dtype, device=qkv.weight.device)
    rows[: 2 * width] = 0.5
    return rows


@contextlib.contextmanager
def fused_attention(attention: list[nn.Module]) -> Iterator[None]:
    """The fused attention kernel (timm's) on for these modules (``fused_attn = True``), each flag restored on exit.

    For ``attention_rule="attnlrp"`` only, whose softmax takes the plain gradient: the rules' hooks on ``qkv`` and
    ``proj`` hold without the probabilities, and the fused backward keeps neither them nor copies of q, k, v.
    """
    flags = [(module, cast(Any, module).fused_attn) for module in attention]
    try:
        for module, _ in flags:
            cast(Any, module).fused_attn = True
        yield
    finally:
        for module, flag in flags:
            cast(Any, module).fused_attn = flag


# --- the rules as objects: each installs its hooks on one module ------------------------------------------------


@dataclass(frozen=True)
class GradientRule:
    """The plain gradient (residual sums, pooling, reshapes, windows, dropout, containers): no hook."""

    def install(self, module: nn.Module) -> list[RemovableHandle]:
        return []


GRADIENT = GradientRule()


@dataclass(frozen=True)
class GammaRule:
    """The generalised gamma rule on a Linear layer or a convolution (``gamma = 0``: epsilon, the plain gradient).

    Args:
        gamma: the rule's ``gamma`` (>= 0).
    """

    gamma: float

    def install(self, module: nn.Module) -> list[RemovableHandle]:
        if self.gamma == 0:
            return []
        if isinstance(module, nn.Conv2d):
            return [module.register_forward_hook(_conv_hook(self.gamma))]
        return [module.register_forward_hook(_linear_hook(Scaling(self.gamma)))]

    def refuses(self, conv: nn.Module) -> str | None:
        """Why the rule does not hold for ``conv`` (gamma needs numeric zero padding), or ``None``."""
        conv = cast(nn.Conv2d, conv)
        if self.gamma != 0 and (conv.padding_mode != "zeros" or isinstance(conv.padding, str)):
            return (
                f"the gamma rule needs numeric zero padding, got padding {conv.padding!r}, padding_mode "
                f"{conv.padding_mode!r} (use conv_gamma=0)"
            )
        return None


@dataclass(frozen=True)
class IdentityRule:
    """The identity rule through an MLP's element-wise activation (the module's ``act``): ``R_in = R_out``."""

    def install(self, module: nn.Module) -> list[RemovableHandle]:
        return [cast(nn.Module, module.act).register_forward_hook(_identity_hook)]


@dataclass(frozen=True)
class LayerNormRule:
    """A LayerNorm with its standard deviation held constant (``_LayerNorm``)."""

    def install(self, module: nn.Module) -> list[RemovableHandle]:
        return [module.register_forward_hook(_layer_norm_hook)]


@dataclass(frozen=True)
class AttentionRule:
    """The attention module's rules, on its ``qkv`` and ``proj`` Linear layers (and ``attn_drop`` for CP-LRP).

    ``"attnlrp"``: the uniform rule on ``A v`` and ``q k^T`` (halves folded into the gamma rule's gradient, or
    scaling hooks when ``gamma = 0``); ``"cp"``: the attention probabilities detached, the values alone carry
    relevance.

    Args:
        kind: ``"attnlrp"`` or ``"cp"``.
        gamma: the gamma rule's ``gamma`` on ``qkv`` and ``proj``.
    """

    kind: AttentionRuleName
    gamma: float

    def install(self, module: nn.Module) -> list[RemovableHandle]:
        qkv, proj = cast(nn.Linear, module.qkv), cast(nn.Linear, module.proj)
        if self.kind == "cp":
            handles = [cast(nn.Module, module.attn_drop).register_forward_hook(_detach_hook)]
            if self.gamma != 0:
                values = slice(2 * qkv.out_features // 3, qkv.out_features)
                handles.append(qkv.register_forward_hook(_linear_hook(Scaling(self.gamma, outputs=values))))
                handles.append(proj.register_forward_hook(_linear_hook(Scaling(self.gamma))))
            return handles
        if self.gamma == 0:
            return [
                qkv.register_forward_hook(_scale_hook(_query_key_halves(qkv))),
                proj.register_forward_pre_hook(_halve_pre_hook),
            ]
        return [
            qkv.register_forward_hook(_linear_hook(Scaling(self.gamma, rows=_query_key_halves(qkv)))),
            proj.register_forward_hook(_linear_hook(Scaling(self.gamma, scale=0.5))),
        ]


@contextlib.contextmanager
def lrp_rules(model: nn.Module, composite: Composite) -> Iterator[None]:
    """Forward hooks that give the model's backward the rules of ``composite`` (``composites.modified_backward``).

    Every module not claimed by a parent's entry installs its own entry's rule; all hooks are removed on exit.
    """
    claimed = composite.claimed(model)
    handles: list[RemovableHandle] = []
    try:
        for module in model.modules():
            if id(module) not in claimed:
                handles.extend(composite.rule(module).install(module))
        yield
    finally:
        for handle in handles:
            handle.remove()
