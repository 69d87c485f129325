"""The backward of each AttnLRP rule as a small ``torch.autograd.Function``: the output as it is, the rule's gradient.

With relevance ``R = x * dy/dx`` at every tensor (Achtibat et al. 2024, ``lxt.efficient``; docs/methods.md §9.1), a
rule is a gradient: ``modified_backward`` installs these on the modules by forward hooks. ``gamma_linear`` and
``gamma_conv`` (the generalised gamma rule; zennit's ``Gamma``), ``identity_rule`` (element-wise activations),
``layer_norm_rule`` (the standard deviation held constant) and ``scale_gradient`` (the uniform rule's halves).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

__all__ = ["Scaling", "gamma_conv", "gamma_linear", "identity_rule", "layer_norm_rule", "scale_gradient"]

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
    matmul in the forward direction and two back. ``Scaling``'s factors fold into the weights and ``addmm``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, rule: Scaling) -> Tensor:
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


class Scaling:
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
    rule = Scaling(gamma, scale, rows, outputs)
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


def identity_rule(x: Tensor, output: Tensor) -> Tensor:
    """``output = f(x)`` as it is, with the identity rule's gradient ``g f(x) / x`` (0 where ``x`` is 0)."""
    return cast(Tensor, _Identity.apply(x, output.detach()))


def layer_norm_rule(x: Tensor, output: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``output = norm(x)`` as it is, with the gradient of the LayerNorm whose standard deviation is constant."""
    dims = len(norm.normalized_shape)
    return cast(Tensor, _LayerNorm.apply(x, output.detach(), norm.weight, norm.bias, norm.eps, dims))


def scale_gradient(x: Tensor, scale: float | Tensor) -> Tensor:
    """``x`` as it is, with its gradient multiplied by ``scale`` (a number or a broadcastable tensor)."""
    return cast(Tensor, _ScaleGradient.apply(x, scale))
