"""The explicit engine's LRP rules (Chefer et al.'s code), one small class per operation (docs/methods.md §3.2, §3.4).

Each rule is a frozen dataclass: its parameters are its fields, calling it carries relevance through one operation.
``composites`` says which rule goes on which timm module; the passes of ``relevance`` look the rules up there.
``s(a, b) = a / (b + 1e-9)``, 0 where ``b = 0``, is the stabiliser of every rule. The two rule sets of the
reference differ in two rules only:

- ``LinearRule`` (``alpha = 1``, bias ignored), ``z+ = x+ W+^T``, ``z- = x- W-^T``: ``joint=True`` (the method's,
  ``modules/layers_ours.py``) divides both sign terms by their sum, ``R_x = x+ (s(R, z+ + z-) W+) + x- (s(R, z+ +
  z-) W-)``; ``joint=False`` (the LRP baselines', ``modules/layers_lrp.py``) divides each term by its own part,
  ``R_x = x+ (s(R, z+) W+) + x- (s(R, z-) W-)`` (each term carries ``R`` on its own: not conservative).
- ``ResidualRule``, ``a + b``: LRP-0 split ``R_a = a s(R, a + b)``, ``R_b = b s(R, a + b)``; ``renormalise=True``
  (the method's) rescales each branch to its share ``|sum R_a| / (|sum R_a| + |sum R_b|)`` of the total (sums over
  one sample), ``renormalise=False`` keeps the plain split. A fork of the residual stream adds its two branches'
  relevance back (``ResidualRule.fork``).

Shared by both: ``PassRule`` (GELU, LayerNorm, softmax, dropout, layer scale pass relevance unchanged);
``ProductRule`` (``A v`` and ``q k^T``: LRP-0 on both operands, each result halved); ``EndsRule`` (a token
selection or a mean over tokens takes LRP-0); ``ZBoxRule`` (the patch convolution: z^B, bounded by the image's
minimum and maximum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EndsRule",
    "Head",
    "LinearRule",
    "PassRule",
    "ProductRule",
    "ResidualRule",
    "ZBoxRule",
    "safe_divide",
]

Head = tuple[nn.Linear, int | None]  # a classifier head and the token row it reads; None: the mean of the patch tokens


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


@dataclass(frozen=True)
class LinearRule:
    """LRP through a Linear layer (alpha-beta with alpha 1, beta 0; bias ignored).

    Args:
        joint: one denominator ``z+ + z-`` for both sign terms (the method's rule), else one per term (the LRP
            baselines').

    Example::

        >>> import torch
        >>> LinearRule()(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]]), torch.eye(2))
        tensor([[1., 0.]])
    """

    joint: bool = True

    def __call__(
        self, relevance: Tensor, x: Tensor, weight: Tensor, output: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Relevance at the input ``x`` from ``relevance`` at the output; ``output`` (``x W^T + bias``) is optional."""
        return _linear_rule(relevance, x, weight, self.joint, output, bias)


def _linear_rule(
    relevance: Tensor, x: Tensor, weight: Tensor, joint: bool, output: Tensor | None, bias: Tensor | None
) -> Tensor:
    """``LinearRule``'s arithmetic; ``output`` (the recorded ``x W^T + bias``, when given) saves a matmul.

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
    """``R_x = x+ (s W+) + x- (s W-)``, ``s = s(R, x+ W+^T + x- W-^T)``: the joint rule as the reference has it."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    scaled = safe_divide(relevance, F.linear(x_pos, w_pos) + F.linear(x_neg, w_neg))
    return (scaled @ w_pos).mul_(x_pos).addcmul_(scaled @ w_neg, x_neg)


def _per_term_linear_rule(relevance: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``R_x = x+ (s(R, z+) W+) + x- (s(R, z-) W-)``, the per-term (baselines') Linear rule.

    No zero mask is needed: where ``z+`` (``z-``) is 0 every product in it is 0, so its finite ``R / 1e-9`` meets
    only zeros on the way back.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    scaled_pos = _divide_into(relevance, F.linear(x_pos, w_pos).add_(1e-9))  # z+ >= 0: never 0 once shifted
    scaled_neg = _divide_into(relevance, _shifted_(F.linear(x_neg, w_neg)))
    return (scaled_pos @ w_pos).mul_(x_pos).addcmul_(scaled_neg @ w_neg, x_neg)


@dataclass(frozen=True)
class ProductRule:
    """LRP-0 through a product ``a @ b`` to both operands, each result halved (``A v`` and ``q k^T``).

    Example::

        >>> import torch
        >>> ProductRule()(torch.tensor([[11.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]]))
        (tensor([[1.5000, 4.0000]]), tensor([[1.5000],
                [4.0000]]))
    """

    def __call__(self, relevance: Tensor, a: Tensor, b: Tensor, product: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(relevance at ``a``, at ``b``); ``product``: ``a @ b`` when the caller has it recorded (saves the matmul)."""
        scaled = safe_divide(relevance, a @ b if product is None else product).mul_(0.5)
        return (scaled @ b.transpose(-2, -1)).mul_(a), (a.transpose(-2, -1) @ scaled).mul_(b)


@dataclass(frozen=True)
class ResidualRule:
    """LRP through a residual sum ``a + b`` (``split``) and the fork that copied the stream (``fork``).

    Args:
        renormalise: rescale each summand's part, per sample, to its absolute share of the total (the method's),
            else the plain LRP-0 split (the LRP baselines').

    Example::

        >>> import torch
        >>> ResidualRule(renormalise=False).split(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]))
        (tensor([[0.5000]]), tensor([[1.5000]]))
    """

    renormalise: bool = True

    def split(self, relevance: Tensor, a: Tensor, b: Tensor, total: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The relevance of ``a + b`` split between ``a`` and ``b``; ``total``: ``a + b`` when recorded."""
        scaled = safe_divide(relevance, a + b if total is None else total)
        r_a, r_b = a * scaled, scaled.mul_(b)
        if not self.renormalise:
            return r_a, r_b
        dims = tuple(range(1, relevance.ndim))
        sum_a, sum_b = r_a.sum(dims, keepdim=True), r_b.sum(dims, keepdim=True)
        total_relevance, both = relevance.sum(dims, keepdim=True), sum_a.abs() + sum_b.abs()
        share_a = safe_divide(sum_a.abs(), both) * total_relevance
        share_b = safe_divide(sum_b.abs(), both) * total_relevance
        return r_a.mul_(safe_divide(share_a, sum_a)), r_b.mul_(safe_divide(share_b, sum_b))

    @staticmethod
    def fork(first: Tensor, second: Tensor, x: Tensor) -> Tensor:
        """Relevance of ``x`` from the two branches it was copied into: ``x s(first + second, x)``."""
        return torch.add(first, second).mul_(x).div_(_shifted_(x.clone()))  # x = 0 gives 0 / 1e-9: no zero mask


@dataclass(frozen=True)
class PassRule:
    """Relevance passes unchanged (element-wise activations, norms, dropout, layer scale, softmax, containers)."""

    def __call__(self, relevance: Tensor) -> Tensor:
        return relevance


@dataclass(frozen=True)
class EndsRule:
    """The rules at the token sequence's two ends, for the whole model.

    At the top, LRP-0 from the classifier heads' inputs to the tokens they read (``select`` one token, or ``mean``
    over tokens); at the bottom, the split of the position embedding's sum ``x + pos``.

    Args:
        average: the rule that splits the logit between two averaged heads (distilled DeiT); ``None``: one head.
        position: the rule of the position embedding's sum; ``None``: the model has none (Swin).

    Example::

        >>> import torch
        >>> tokens = torch.tensor([[[1.0], [3.0]]])  # [B, N, D]
        >>> EndsRule().mean(torch.tensor([[2.0]]), tokens)
        tensor([[[0.5000],
                 [1.5000]]])
    """

    average: ResidualRule | None = None
    position: ResidualRule | None = None

    @staticmethod
    def mean(relevance: Tensor, tokens: Tensor) -> Tensor:
        """``[B, D]`` relevance of ``mean_j tokens[:, j]`` -> ``[B, N, D]``: token ``j`` gets ``x_j s(R, sum x)``."""
        return tokens * safe_divide(relevance, tokens.sum(dim=1)).unsqueeze(1)

    @staticmethod
    def select(relevance: Tensor, token: Tensor) -> Tensor:
        """``[B, D]`` relevance of one selected token ``[B, D]`` -> its share, LRP-0 (``x s(R, x)``)."""
        return token * safe_divide(relevance, token)


@dataclass(frozen=True)
class ZBoxRule:
    """The z^B rule through a patch convolution (kernel = stride, no padding), bounded by each image's min and max.

    With ``L``/``H`` the image's minimum/maximum (one number per image) and ``z = conv(x, W) - conv(L, W+) -
    conv(H, W-)`` (bias ignored; ``z >= 0``), the input gets ``x (s W) - L (s W+) - H (s W-)`` transposed-convolved,
    ``s = s(R, z)``. Each output's relevance goes to its own patch's pixels, all of it up to the stabiliser.

    Example::

        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 1, (1, 2), stride=(1, 2), bias=False)
        >>> _ = conv.weight.data.copy_(torch.tensor([[[[1.0, 1.0]]]]))
        >>> ZBoxRule()(torch.ones(1, 1, 1, 1), torch.tensor([[[[1.0, -1.0]]]]), conv).detach()  # L = -1, H = 1
        tensor([[[[1., 0.]]]])
    """

    def __call__(self, relevance: Tensor, x: Tensor, conv: nn.Conv2d) -> Tensor:
        """``relevance``: ``[B, D, gh, gw]`` at the convolution's output; ``x``: its input ``[B, C, H, W]``."""
        weight = conv.weight.to(x.dtype)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
        high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
        stride = conv.stride
        z = F.conv2d(x, weight, stride=stride)
        z = z - F.conv2d(low, w_pos, stride=stride) - F.conv2d(high, w_neg, stride=stride)
        scaled = safe_divide(relevance, z)

        def back(w: Tensor) -> Tensor:
            return F.conv_transpose2d(scaled, w, stride=stride)

        return x * back(weight) - low * back(w_pos) - high * back(w_neg)

    @staticmethod
    def refuses(conv: nn.Module) -> str | None:
        """Why the rule does not cover ``conv`` (it must patchify: stride = kernel, no padding), or ``None``."""
        if (
            isinstance(conv, nn.Conv2d)
            and tuple(conv.kernel_size) == tuple(conv.stride)
            and tuple(conv.padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1
        ):
            return None
        return (
            f"the z^B rule needs a patch embedding convolution with stride = kernel size and no padding, got {conv!r}"
        )
