"""The LRP rules of Chefer et al.'s code, one small function per operation (docs/methods.md §3.2, §3.4).

``s(a, b) = a / (b + 1e-9)``, 0 where ``b = 0``, is the stabiliser of every rule. Two rule sets: ``CHEFER``
(``modules/layers_ours.py``, for ``transformer_attribution``) and ``BASELINE`` (``modules/layers_lrp.py``, for the
paper's LRP baselines). They differ in two rules only:

- Linear (``alpha = 1``, bias ignored), ``z+ = x+ W+^T``, ``z- = x- W-^T``: ``CHEFER`` divides both sign terms by
  their sum, ``R_x = x+ (s(R, z+ + z-) W+) + x- (s(R, z+ + z-) W-)``; ``BASELINE`` divides each term by its own
  part, ``R_x = x+ (s(R, z+) W+) + x- (s(R, z-) W-)`` (each term carries ``R`` on its own, so the sum is not
  conservative).
- Residual ``a + b``: LRP-0 split ``R_a = a s(R, a + b)``, ``R_b = b s(R, a + b)``; ``CHEFER`` then rescales each
  branch to its share ``|sum R_a| / (|sum R_a| + |sum R_b|)`` of the total (sums over one sample), ``BASELINE``
  keeps the plain split.

Shared by both: GELU, LayerNorm, softmax, dropout, layer scale pass relevance unchanged; ``A v`` and ``q k^T`` take
LRP-0 on both operands, each result halved; a fork of the residual stream adds its two branches' relevance back;
a token selection or a mean over tokens takes LRP-0; the patch convolution takes the z^B rule bounded by the
image's minimum and maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BASELINE",
    "CHEFER",
    "Rules",
    "add_rule",
    "fork_rule",
    "linear_rule",
    "matmul_rule",
    "mean_rule",
    "safe_divide",
    "zb_conv_rule",
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
    return _divide_into(numerator, _shifted_(denominator.clone())).masked_fill_(denominator == 0, 0.0)


def _shifted_(denominator: Tensor) -> Tensor:
    """``denominator + 1e-9`` in place, 1e-9 where that sum is 0 (the reference's guard against ``b = -1e-9``)."""
    denominator.add_(1e-9)
    return denominator.masked_fill_(denominator == 0, 1e-9)


def _divide_into(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, written over ``denominator`` (a temporary) where the shapes and dtypes allow."""
    same = numerator.shape == denominator.shape and numerator.dtype == denominator.dtype
    if same and not (numerator.requires_grad or denominator.requires_grad):
        return torch.div(numerator, denominator, out=denominator)
    return numerator / denominator


def linear_rule(
    relevance: Tensor,
    x: Tensor,
    weight: Tensor,
    joint: bool = True,
    output: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Relevance at the input ``x`` of a Linear layer (alpha-beta with alpha 1, beta 0; bias ignored).

    ``joint``: one denominator for both sign terms (``CHEFER``), else one per term (``BASELINE``). ``output``: the
    layer's recorded output ``x W^T + bias`` when the caller has it, which saves one matmul of the joint rule.

    The joint rule runs on ``W`` and ``|W|``: with ``z = x W^T`` and ``u = |x| |W|^T``, the denominator is ``z+ + z-
    = (z + u) / 2`` and ``x+ (s W+) + x- (s W-) = (x (s W) + |x| (s |W|)) / 2``: three matmuls (two with ``output``
    given), not four. The two halvings cancel: ``R_x = x (s' W) + |x| (s' |W|)`` with ``s' = R / (z + u + 2e-9)``
    (``z + u >= 0``; it is clamped there, against rounding). Each rule writes over its own temporaries.

    ``z + u`` cancels where ``z+`` is small against ``|z|`` (nearly every product ``x_i W_ji`` negative): rounding
    of ``u`` then leaves a denominator far from ``2 z+`` (not 0 where ``z+`` is), and the relevance that the
    shared denominator sends back no longer cancels between the two matmuls. Rows with an output where ``z + u <
    2^-10 (|z + bias| + |bias|)`` take the reference's four-matmul form instead (``_direct_joint_linear_rule``):
    rare at a ViT's widths, common at a test's width of 16. Off the CPU every row takes the four-matmul form:
    picking rows costs the host a sync per layer, which stalls a GPU more than one matmul does.
    """
    weight = weight.to(x.dtype)
    if not joint:
        return _per_term_linear_rule(relevance, x, weight)
    if _sync_free(x):
        return _direct_joint_linear_rule(relevance, x, weight)
    magnitude, x_magnitude = weight.abs(), x.abs()
    flat_magnitude = x_magnitude.reshape(-1, x.shape[-1])
    if output is None:
        output = F.linear(x, weight).reshape(-1, weight.shape[0])
        denominator = torch.addmm(output, flat_magnitude, magnitude.T)
    else:  # z = output - bias
        output = output.to(x.dtype).reshape(-1, weight.shape[0])
        denominator = torch.addmm(output, flat_magnitude, magnitude.T)
        if bias is not None:
            denominator.sub_(bias.detach().to(x.dtype))
    cancelled = _cancelled_rows(denominator, output, bias)
    denominator.add_(2e-9).clamp_(min=2e-9)
    flat_relevance = relevance.reshape(denominator.shape)
    scaled = _divide_into(flat_relevance, denominator)
    at_input = (scaled @ weight).reshape(x.shape).mul_(x)
    at_input = at_input.addcmul_((scaled @ magnitude).reshape(x.shape), x_magnitude)
    if len(cancelled):
        flat_x, flat_at_input = x.reshape(-1, x.shape[-1]), at_input.view(-1, x.shape[-1])
        flat_at_input[cancelled] = _direct_joint_linear_rule(flat_relevance[cancelled], flat_x[cancelled], weight)
    return at_input


def _sync_free(x: Tensor) -> bool:
    """Whether the rule must run without a host sync: off the CPU, where ``.nonzero()`` waits for the device."""
    return x.device.type != "cpu"


CANCELLATION = 2.0**-10  # the joint rule's z + u below this fraction of |z + bias| + |bias|: rounding dominates it


def _cancelled_rows(denominator: Tensor, output: Tensor, bias: Tensor | None) -> Tensor:
    """Indices of the rows with an output where ``z + u < CANCELLATION (|output| + |bias|)``; usually none.

    A row-wise bound (its smallest ``z + u`` against its largest ``|output|``) picks the candidates with reductions
    only; the element-wise test then runs on those rows alone, so no temporary of the output's size is made.
    """
    largest = torch.maximum(output.amax(dim=1), output.amin(dim=1).neg_())
    bias_magnitude = bias.detach().to(output.dtype).abs() if bias is not None else None
    if bias_magnitude is not None:
        largest.add_(bias_magnitude.max())
    candidates = (denominator.amin(dim=1) < largest.mul_(CANCELLATION)).nonzero().squeeze(1)
    if not len(candidates):
        return candidates
    scale = output[candidates].abs()
    if bias_magnitude is not None:
        scale.add_(bias_magnitude)
    return candidates[(denominator[candidates] < scale.mul_(CANCELLATION)).any(dim=1)]


def _direct_joint_linear_rule(relevance: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``R_x = x+ (s W+) + x- (s W-)``, ``s = s(R, x+ W+^T + x- W-^T)``: the ``CHEFER`` rule as the reference has it."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    scaled = safe_divide(relevance, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
    return (scaled @ w_pos).mul_(x_pos).addcmul_(scaled @ w_neg, x_neg)


def _per_term_linear_rule(relevance: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``R_x = x+ (s(R, z+) W+) + x- (s(R, z-) W-)``, the ``BASELINE`` Linear rule.

    No zero mask is needed: where ``z+`` (``z-``) is 0 every product in it is 0, so its finite ``R / 1e-9`` meets
    only zeros on the way back.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    scaled_pos = _divide_into(relevance, F.linear(x_pos, w_pos).add_(1e-9))  # z+ >= 0: never 0 once shifted
    scaled_neg = _divide_into(relevance, _shifted_(F.linear(x_neg, w_neg)))
    return (scaled_pos @ w_pos).mul_(x_pos).addcmul_(scaled_neg @ w_neg, x_neg)


def matmul_rule(relevance: Tensor, a: Tensor, b: Tensor, product: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LRP-0 through ``a @ b`` to both operands, each halved (the attention module's rule for its two products).

    ``product``: ``a @ b`` when the caller has it recorded (saves the matmul).
    """
    scaled = safe_divide(relevance, a @ b if product is None else product).mul_(0.5)
    return (scaled @ b.transpose(-2, -1)).mul_(a), (a.transpose(-2, -1) @ scaled).mul_(b)


def add_rule(
    relevance: Tensor, a: Tensor, b: Tensor, renormalise: bool = True, total: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Split the relevance of ``a + b`` between the summands (LRP-0).

    ``renormalise``: rescale each part, per sample, to its absolute share of the total (``CHEFER``). ``total``:
    ``a + b`` when the caller has it recorded.
    """
    scaled = safe_divide(relevance, a + b if total is None else total)
    r_a, r_b = a * scaled, scaled.mul_(b)
    if not renormalise:
        return r_a, r_b
    dims = tuple(range(1, relevance.ndim))
    sum_a, sum_b = r_a.sum(dims, keepdim=True), r_b.sum(dims, keepdim=True)
    total_relevance, both = relevance.sum(dims, keepdim=True), sum_a.abs() + sum_b.abs()
    share_a = safe_divide(sum_a.abs(), both) * total_relevance
    share_b = safe_divide(sum_b.abs(), both) * total_relevance
    return r_a.mul_(safe_divide(share_a, sum_a)), r_b.mul_(safe_divide(share_b, sum_b))


def fork_rule(first: Tensor, second: Tensor, x: Tensor) -> Tensor:
    """Relevance of ``x`` from the two branches it was copied into: ``x s(first + second, x)``."""
    return torch.add(first, second).mul_(x).div_(_shifted_(x.clone()))  # x = 0 gives 0 / 1e-9: no zero mask needed


def mean_rule(relevance: Tensor, tokens: Tensor) -> Tensor:
    """LRP-0 through a mean over tokens: ``[B, D]`` relevance of ``mean_j tokens[:, j]`` -> ``[B, N, D]``.

    Token ``j`` gets ``x_j s(R, sum_j x_j)`` (the ``1 / N`` of the mean cancels).
    """
    return tokens * safe_divide(relevance, tokens.sum(dim=1)).unsqueeze(1)


def zb_conv_rule(relevance: Tensor, x: Tensor, conv: nn.Conv2d) -> Tensor:
    """The z^B rule through a patch convolution (kernel = stride, no padding), bounded by each image's min and max.

    ``relevance``: ``[B, D, gh, gw]`` at the convolution's output; ``x``: its input ``[B, C, H, W]``. With
    ``L``/``H`` the image's minimum/maximum (one number per image) and ``z = conv(x, W) - conv(L, W+) - conv(H, W-)``
    (bias ignored; ``z >= 0``), the input gets ``x (s W) - L (s W+) - H (s W-)`` transposed-convolved, ``s =
    s(R, z)``. Each output's relevance goes to its own patch's pixels, all of it up to the stabiliser.
    """
    weight = conv.weight.to(x.dtype)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    stride = conv.stride
    z = F.conv2d(x, weight, stride=stride) - F.conv2d(low, w_pos, stride=stride) - F.conv2d(high, w_neg, stride=stride)
    scaled = safe_divide(relevance, z)

    def back(w: Tensor) -> Tensor:
        return F.conv_transpose2d(scaled, w, stride=stride)

    return x * back(weight) - low * back(w_pos) - high * back(w_neg)
