"""AttnLRP and CP-LRP as one modified backward over a stock timm model (Gradient x Input form).

Each rule is a forward hook that returns the module's own output with a different gradient: ``out = z.detach() +
(t - t.detach())`` has the value of ``z`` exactly and the gradient of ``t``. With relevance ``R = x * dy/dx`` at
every tensor (Achtibat et al. 2024, ``lxt.efficient``; METHODS.md §9.1) the rules are:

- element-wise activations (GELU): identity rule, ``R_in = R_out``: gradient ``f(x) / x``.
- LayerNorm: the standard deviation is a constant, ``y = (x - mean(x)) / stopgrad(std) * w + b`` (epsilon rule on
  the centring; ``b`` keeps its share).
- attention, ``attention_rule="attnlrp"``: the uniform rule on both products, ``A v`` (half to ``A``, half to ``v``:
  the gradient at the output of the heads is halved) and ``q k^T`` (half to each: the gradient at ``q`` and ``k``
  halved again); the softmax takes the plain gradient, which in this form is AttnLRP's softmax rule
  ``R_in = x (R_out - s sum(R_out))`` (the rest is the bias term of its Taylor expansion; relative position
  biases keep their share of its input's relevance).
- attention, ``attention_rule="cp"`` (Ali et al. 2022): ``q`` and ``k`` detached, so the attention probabilities are
  constant weights and the relevance goes through the values only.
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
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["AttentionRule", "gamma_rule", "lrp_rules", "stabilize", "with_gradient"]

AttentionRule = Literal["attnlrp", "cp"]


def with_gradient(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value``'s numbers with ``surrogate``'s gradient (the two have one shape)."""
    return value.detach() + (surrogate - surrogate.detach())


def stabilize(denominator: Tensor, epsilon: float = 1e-6) -> Tensor:
    """``d + epsilon * sign(d)``, with sign +1 at 0: zennit's stabiliser for the gamma rule's denominators."""
    return denominator + epsilon * torch.where(denominator >= 0, 1.0, -1.0).to(denominator)


def _gamma_coefficients(
    z: Tensor, p: Tensor, bias: Tensor | None, gamma: float, shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """The weights ``(c1, c2)`` with which ``z`` and ``p`` enter the gamma rule's surrogate ``c1 z + c2 p``."""
    b = torch.zeros((), dtype=z.dtype, device=z.device) if bias is None else bias.detach().reshape(shape)
    up = (z > 0) * z / stabilize(z + gamma * (p + b.clamp(min=0)))
    down = (z < 0) * z / stabilize(z + gamma * (z - b - p + b.clamp(max=0)))
    # up * (z0 + g p) + down * ((1 + g) z0 - g p), the rule's two weighted sums, as a function of z0 = z - b and p
    return up + (1 + gamma) * down, gamma * (up - down)


def gamma_rule(
    x: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, gamma: float, op: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """``z = op(x, weight) + bias`` with the gamma rule's gradient (module docstring); ``op`` is linear in each.

    With ``p = op(x+, W+) + op(x-, W-)`` and ``z0 = z - bias``, the two denominators are ``z + g (p + b+)`` (where
    ``z > 0``) and ``z + g (z0 - p + b-)`` (where ``z < 0``), so one extra ``op`` pair gives both. ``F.linear``
    runs as a custom autograd function (all of the rule in its backward); other ops (the patch convolution) as a
    surrogate with the rule's gradient.
    """
    if op is F.linear:
        return cast(Tensor, _GammaLinear.apply(x, z.detach(), weight.detach(), bias, gamma))
    w = weight.detach()
    p = op(x.clamp(min=0), w.clamp(min=0)) + op(x.clamp(max=0), w.clamp(max=0))
    with torch.no_grad():
        c1, c2 = _gamma_coefficients(z, p, bias, gamma, (-1,) + (1,) * (z.ndim - 2))
    return with_gradient(z, c1 * z + c2 * p)


class _GammaLinear(torch.autograd.Function):
    """Forward: the stock output ``z`` as it is; backward: the gamma rule's gradient at ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, gamma: float) -> Tensor:
        ctx.save_for_backward(x.detach(), z, weight)
        ctx.bias, ctx.gamma = None if bias is None else bias.detach(), gamma
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        # With W+ = (W + |W|) / 2 and W- = (W - |W|) / 2: p = (z0 + |x| |W|^T) / 2, and the gradient
        # c1 g W + [x > 0] (c2 g W+) + [x < 0] (c2 g W-) is (c1 g + c2 g / 2) W + sign(x) (c2 g / 2) |W|.
        x, z, weight = ctx.saved_tensors
        bias = ctx.bias
        z0 = z if bias is None else z - bias
        magnitude = weight.abs()
        p = (z0 + F.linear(x.abs(), magnitude)) / 2
        c1, c2 = _gamma_coefficients(z, p, bias, ctx.gamma, (-1,))
        half = grad * c2 / 2
        return (grad * c1 + half) @ weight + x.sign() * (half @ magnitude), None, None, None, None


def _gamma_hook(gamma: float) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if isinstance(module, nn.Conv2d):
            stride, padding, dilation, groups = module.stride, module.padding, module.dilation, module.groups

            def op(x: Tensor, w: Tensor) -> Tensor:
                return F.conv2d(x, w, None, stride, padding, dilation, groups)

            return gamma_rule(inputs[0], output, module.weight, module.bias, gamma, op)
        return gamma_rule(inputs[0], output, module.weight, module.bias, gamma, F.linear)  # type: ignore[arg-type]

    return hook


def _identity_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    x = inputs[0]
    ratio = torch.where(x == 0, 0.0, output.detach() / torch.where(x == 0, 1.0, x.detach()))
    return with_gradient(output, x * ratio)


def _layer_norm_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    norm: Any = module
    x = inputs[0]
    dims = tuple(range(-len(norm.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.detach().pow(2).mean(dim=dims, keepdim=True) + norm.eps).sqrt()
    y = centred / std
    if norm.weight is not None:
        y = y * norm.weight
    if norm.bias is not None:
        y = y + norm.bias
    return with_gradient(output, y)


def _qkv_hook(rule: AttentionRule) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        query_key, value = output.split([2 * output.shape[-1] // 3, output.shape[-1] // 3], dim=-1)
        if rule == "cp":
            return torch.cat([query_key.detach(), value], dim=-1)
        return torch.cat([with_gradient(query_key, query_key / 2), value], dim=-1)  # uniform rule on q k^T

    return hook


def _halve_pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (with_gradient(inputs[0], inputs[0] / 2), *inputs[1:])  # uniform rule on A v: half to A, half to v


@contextlib.contextmanager
def lrp_rules(
    model: nn.Module, attention: list[nn.Module], attention_rule: AttentionRule, gamma: float, conv_gamma: float
) -> Iterator[None]:
    """Forward hooks that give the model's backward the rules of the module docstring; all removed on exit.

    Args:
        model: the model; its ``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm`` modules and its MLPs' activations get
            their rules.
        attention: the attention modules (each with a ``qkv`` Linear whose output is ``[q | k | v]`` and a ``proj``
            Linear that reads the heads' output).
        attention_rule: ``"attnlrp"`` or ``"cp"``.
        gamma: the gamma of the Linear layers' rule.
        conv_gamma: the gamma of the convolutions' rule.
    """
    handles: list[RemovableHandle] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.Linear) and gamma != 0:
                handles.append(module.register_forward_hook(_gamma_hook(gamma)))
            elif isinstance(module, nn.Conv2d) and conv_gamma != 0:
                handles.append(module.register_forward_hook(_gamma_hook(conv_gamma)))
            elif isinstance(module, nn.LayerNorm):
                handles.append(module.register_forward_hook(_layer_norm_hook))
            act = getattr(module, "act", None)
            if isinstance(getattr(module, "fc1", None), nn.Linear) and isinstance(act, nn.Module):
                handles.append(act.register_forward_hook(_identity_hook))  # an MLP's activation
        for module in attention:
            handles.append(module.qkv.register_forward_hook(_qkv_hook(attention_rule)))  # type: ignore[union-attr]
            if attention_rule == "attnlrp":
                handles.append(module.proj.register_forward_pre_hook(_halve_pre_hook))  # type: ignore[union-attr]
        yield
    finally:
        for handle in handles:
            handle.remove()
