"""AttnLRP and CP-LRP as one modified backward over a stock timm model (Gradient x Input form).

Each rule is a forward hook that returns the module's own output, unchanged, from a small custom autograd function
whose backward is the rule's: with relevance ``R = x * dy/dx`` at every tensor (Achtibat et al. 2024,
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
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input
from torch.utils.hooks import RemovableHandle

__all__ = [
    "GRADIENT",
    "AttentionRule",
    "AttentionRuleName",
    "GammaRule",
    "GradientRule",
    "IdentityRule",
    "LayerNormRule",
    "fused_attention",
    "gamma_conv",
    "gamma_linear",
    "lrp_rules",
]

AttentionRuleName = Literal["attnlrp", "cp"]

EPSILON = 1e-6  # zennit's stabiliser of the gamma rule's denominators: d + epsilon * sign(d)


def _gamma_factors(z: Tensor, magnitude: Tensor, grad: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """``(|z| g / D, z g / D)`` of the gamma rule's gradient (``_GammaLinear``); ``magnitude`` is overwritten.

    ``magnitude`` comes in as ``|x| |W|^T + |b| + 2 epsilon / gamma`` and becomes the denominator ``D`` (scaled by
    ``2 / gamma``); the two factors are the weights of ``W`` and of ``sign(x) |W|`` in the gradient.
    """
    magnitude_z = z.abs()
    denominator = magnitude.add_(magnitude_z, alpha=1 + 2 / gamma)
    ratio = torch.div(grad, denominator, out=denominator)
    return magnitude_z.mul_(ratio), ratio.mul_(z)


def _offset(bias: Tensor | None, gamma: float, like: Tensor) -> Tensor:
    """``|b| + 2 epsilon / gamma`` per output (the denominator's constant, in units of ``gamma / 2``)."""
    if bias is None:
        return torch.full(like.shape[:1], 2 * EPSILON / gamma, dtype=like.dtype, device=like.device)
    return bias.abs().add_(2 * EPSILON / gamma)


class _GammaLinear(torch.autograd.Function):
    """Forward: the stock output ``z`` as it is; backward: the gamma rule's gradient at ``x``.

    With ``p = x+ W+^T + x- W-^T = (z0 + |x| |W|^T) / 2`` (``z0 = z - b``), both of the rule's denominators, ``z +
    g (p + b+)`` where ``z > 0`` and ``z + g (z0 - p + b-)`` where ``z < 0``, are ``sign(z) D`` with ``D = (1 + g/2)
    |z| + (g/2) (|x| |W|^T + |b|)`` (plus the stabiliser ``epsilon``; ``D > 0``), and the rule's gradient
    ``(z > 0) g/D_up (W + g [x>0] W+ + g [x<0] W-) + (z < 0) g/D_down (W + g [x>0] W- + g [x<0] W+)`` is ``(1 + g/2)
    (|z| g / D) W + (g/2) sign(x) (z g / D) |W|`` (nothing where ``z = 0``, as in the rule's two masks): one extra
    matmul in the forward direction and two back. ``_Scaling``'s factors fold into the weights and ``addmm``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, rule: _Scaling) -> Tensor:
        ctx.save_for_backward(x.detach(), z, weight)
        ctx.bias, ctx.rule = None if bias is None else bias.detach(), rule
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        x, z, weight = ctx.saved_tensors
        bias, rule = ctx.bias, ctx.rule
        if rule.outputs is not None:  # the other outputs' gradient is zero: leave them out
            z, grad, weight = z[..., rule.outputs], grad[..., rule.outputs], weight[rule.outputs]
            bias = None if bias is None else bias[rule.outputs]
        gamma = rule.gamma
        magnitude = weight.abs()
        flat_x = x.reshape(-1, x.shape[-1])
        denominator = F.linear(flat_x.abs(), magnitude, _offset(bias, gamma, weight))
        factor, signed = _gamma_factors(
            z.reshape(denominator.shape), denominator, grad.reshape(denominator.shape), gamma
        )
        if rule.rows is not None:  # a gradient scale per output, folded into the weights
            weight, magnitude = weight * rule.rows[:, None], magnitude.mul_(rule.rows[:, None])
        grad_x = (signed @ magnitude).mul_(flat_x.sign())
        grad_x = grad_x.addmm_(factor, weight, beta=rule.scale, alpha=rule.scale * (1 + 2 / gamma))
        return grad_x.reshape(x.shape), None, None, None, None


class _GammaConv(torch.autograd.Function):
    """``_GammaLinear`` for a convolution (``|x| |W|^T``: ``|x|`` convolved with ``|W|``; ``@ W``: the transpose)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, gamma: float, geometry: _Geometry
    ) -> Tensor:
        ctx.save_for_backward(x.detach(), z, weight)
        ctx.bias, ctx.gamma, ctx.geometry = None if bias is None else bias.detach(), gamma, geometry
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        x, z, weight = ctx.saved_tensors
        gamma, geometry = ctx.gamma, ctx.geometry
        magnitude = weight.abs()
        denominator = F.conv2d(x.abs(), magnitude, _offset(ctx.bias, gamma, weight), *geometry)
        factor, signed = _gamma_factors(z, denominator, grad, gamma)
        grad_x = _conv_input(signed, magnitude, x.shape, geometry).mul_(x.sign())
        grad_x = grad_x.add_(_conv_input(factor, weight, x.shape, geometry), alpha=1 + 2 / gamma)
        return grad_x, None, None, None, None, None


_Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]  # stride, padding, dilation, groups


def _conv_input(grad: Tensor, weight: Tensor, shape: torch.Size, geometry: _Geometry) -> Tensor:
    """The gradient at a convolution's input ``[B, C, H, W]``: its transpose applied to ``grad``.

    A patchifying convolution (stride = kernel, no padding, dilation or groups) as a matmul and a reshape, which
    on the CPU is a few times faster than the general transposed convolution.
    """
    stride, padding, dilation, groups = geometry
    kernel = (weight.shape[-2], weight.shape[-1])
    if stride != kernel or padding != (0, 0) or dilation != (1, 1) or groups != 1:
        return conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
    batch, _, rows, columns = grad.shape
    patches = grad.flatten(2).transpose(1, 2) @ weight.flatten(1)  # [B, rows * columns, C kh kw]
    patches = patches.reshape(batch, rows, columns, shape[1], *kernel).permute(0, 3, 1, 4, 2, 5)
    image = patches.reshape(batch, shape[1], rows * kernel[0], columns * kernel[1])
    return F.pad(image, (0, shape[-1] - image.shape[-1], 0, shape[-2] - image.shape[-2]))  # a remainder: no gradient


class _Scaling:
    """What a Linear's gamma rule needs besides the layer: ``gamma``, the uniform rules' gradient scales folded in.

    ``scale`` multiplies the gradient at the input (AttnLRP's half at the heads' output), ``rows`` the gradient at
    each output (its half at ``q`` and ``k``), and ``outputs``, where given, are the only outputs with a gradient
    (CP-LRP's values).
    """

    def __init__(
        self, gamma: float, scale: float = 1.0, rows: Tensor | None = None, outputs: slice | None = None
    ) -> None:
        self.gamma, self.scale, self.rows, self.outputs = gamma, scale, rows, outputs


def gamma_linear(
    x: Tensor,
    z: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    gamma: float,
    scale: float = 1.0,
    rows: Tensor | None = None,
    outputs: slice | None = None,
) -> Tensor:
    """``z = F.linear(x, weight, bias)`` as it is, with the gamma rule's gradient (``gamma > 0``; module docstring).

    Args:
        x: the layer's input ``[..., in]``.
        z: its output ``[..., out]``.
        weight: ``[out, in]``.
        bias: ``[out]`` or ``None``.
        gamma: the rule's ``gamma``.
        scale: a factor on the gradient at ``x``.
        rows: a factor ``[out]`` on the gradient at ``z`` (or ``None``).
        outputs: the outputs whose gradient the rule reads, the others' being zero (``None``: all).
    """
    rule = _Scaling(gamma, scale, rows, outputs)
    return cast(Tensor, _GammaLinear.apply(x, z.detach(), weight.detach(), bias, rule))


def gamma_conv(x: Tensor, z: Tensor, conv: nn.Conv2d, gamma: float) -> Tensor:
    """``z = conv(x)`` as it is, with the gamma rule's gradient (``gamma > 0``; numeric zero padding only)."""
    geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
    return cast(Tensor, _GammaConv.apply(x, z.detach(), conv.weight.detach(), conv.bias, gamma, geometry))


class _Identity(torch.autograd.Function):
    """Forward: ``f(x)`` as it is; backward: ``g f(x) / x`` (0 where ``x`` is 0), the identity rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, output: Tensor) -> Tensor:
        ctx.save_for_backward(x.detach(), output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        x, output = ctx.saved_tensors
        return (grad * output).div_(x).masked_fill_(x == 0, 0.0), None


class _LayerNorm(torch.autograd.Function):
    """Forward: the LayerNorm's output as it is; backward: the LayerNorm's with its standard deviation constant.

    The bias gets its plain gradient (it absorbs relevance, like any other bias); the weight, which multiplies,
    none (keeping its gradient's input would cost the pass a tensor per LayerNorm that nothing reads).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, output: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, dims: int
    ) -> Tensor:
        axes = tuple(range(-dims, 0))
        centred = x.detach() - x.detach().mean(dim=axes, keepdim=True)
        ctx.save_for_backward(centred.square_().mean(dim=axes, keepdim=True).add_(eps).sqrt_())
        ctx.weight, ctx.axes = None if weight is None else weight.detach(), axes
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (std,) = ctx.saved_tensors
        axes, weight = ctx.axes, ctx.weight
        grad_bias = grad.sum(dim=tuple(range(grad.ndim - len(axes)))) if ctx.needs_input_grad[3] else None
        scaled = grad * weight if weight is not None else grad.clone()
        grad_x = scaled.sub_(scaled.mean(dim=axes, keepdim=True)).div_(std)
        return grad_x, None, None, grad_bias, None, None


class _ScaleGradient(torch.autograd.Function):
    """Forward: ``x`` as it is; backward: the gradient times ``scale`` (a number or a broadcastable tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float | Tensor) -> Tensor:
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]


def _linear_hook(rule: _Scaling) -> Hook:
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
    return cast(Tensor, _Identity.apply(inputs[0], output.detach()))


def _layer_norm_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    norm = cast(nn.LayerNorm, module)
    dims = len(norm.normalized_shape)
    return cast(Tensor, _LayerNorm.apply(inputs[0], output.detach(), norm.weight, norm.bias, norm.eps, dims))


def _detach_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output.detach()  # CP-LRP: the attention probabilities are constant weights


def _scale_hook(scale: float | Tensor) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return cast(Tensor, _ScaleGradient.apply(output, scale))

    return hook


def _halve_pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (cast(Tensor, _ScaleGradient.apply(inputs[0], 0.5)), *inputs[1:])  # uniform rule on A v


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
        return [module.register_forward_hook(_linear_hook(_Scaling(self.gamma)))]

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
                handles.append(qkv.register_forward_hook(_linear_hook(_Scaling(self.gamma, outputs=values))))
                handles.append(proj.register_forward_hook(_linear_hook(_Scaling(self.gamma))))
            return handles
        if self.gamma == 0:
            return [
                qkv.register_forward_hook(_scale_hook(_query_key_halves(qkv))),
                proj.register_forward_pre_hook(_halve_pre_hook),
            ]
        return [
            qkv.register_forward_hook(_linear_hook(_Scaling(self.gamma, rows=_query_key_halves(qkv)))),
            proj.register_forward_hook(_linear_hook(_Scaling(self.gamma, scale=0.5))),
        ]


@contextlib.contextmanager
def lrp_rules(model: nn.Module, composite: Any) -> Iterator[None]:
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
