"""The explicit engine's rules (``rules.py``), each on numbers small enough to work out by hand, one property a test."""

import dataclasses

import pytest
import torch
from torch import nn

from lightning_vitx.explainers.lrp.rules import (
    EndsRule,
    LinearRule,
    ProductRule,
    ResidualRule,
    ZBoxRule,
    _direct_joint_linear_rule,
    safe_divide,
)

# x+ = [1, 0], x- = [0, -1]; W+ = [[2, 0], [1, 3]], W- = [[0, -1], [0, 0]]; z+ = [2, 1], z- = [1, 0].
X, WEIGHT = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, -1.0], [1.0, 3.0]])


def test_rules_are_frozen_values():
    assert LinearRule() == LinearRule(joint=True) != LinearRule(joint=False)
    assert ResidualRule() == ResidualRule(renormalise=True) != ResidualRule(renormalise=False)
    assert len({LinearRule(), LinearRule(joint=True), ProductRule(), ProductRule()}) == 2  # hashable, by value
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinearRule().joint = False  # type: ignore[misc]


# --- LinearRule -----------------------------------------------------------------------------------------------------


def test_joint_linear_rule_by_hand():
    # z = z+ + z- = [2 + 1, 1] = [3, 1]. R = [1, 0]: s = [1/3, 0]; R_x = x+ (s W+) + x- (s W-) = [2/3, 0] + [0, 1/3].
    relevance = LinearRule(joint=True)(torch.tensor([[1.0, 0.0]]), X, WEIGHT)
    torch.testing.assert_close(relevance, torch.tensor([[2 / 3, 1 / 3]]))


def test_per_term_linear_rule_by_hand():
    # R = [1, 0]: s+ = [1/2, 0], s- = [1, 0]; R_x = x+ (s+ W+) + x- (s- W-) = [1, 0] + [0, -1 * -1] = [1, 1].
    # Each sign term carries R on its own: the total is 2, where the joint denominator gives 1.
    relevance = LinearRule(joint=False)(torch.tensor([[1.0, 0.0]]), X, WEIGHT)
    torch.testing.assert_close(relevance, torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(LinearRule()(torch.tensor([[1.0, 0.0]]), X, WEIGHT), torch.tensor([[2 / 3, 1 / 3]]))


def test_linear_rules_match_their_four_matmul_forms_and_read_the_recorded_output():
    # The joint rule runs as x (s' W) + |x| (s' |W|), s' = R / (z + u + 2e-9); the per-term rule skips the zero mask.
    # Both against the explicit sign-split sums, with a zero input row (a padded token) and the recorded output.
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64), torch.randn(4)
    x[0, 2] = 0.0
    relevance = torch.randn(2, 5, 4, dtype=torch.float64)
    x_pos, x_neg, w_pos, w_neg = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)
    z_pos, z_neg = x_pos @ w_pos.T, x_neg @ w_neg.T
    joint = relevance / (z_pos + z_neg + 1e-9)
    expected_joint = x_pos * (joint @ w_pos) + x_neg * (joint @ w_neg)
    per_term = x_pos * ((relevance / (z_pos + 1e-9)) @ w_pos) + x_neg * ((relevance / (z_neg + 1e-9)) @ w_neg)
    output = torch.nn.functional.linear(x, weight, bias.double())
    torch.testing.assert_close(LinearRule()(relevance, x, weight), expected_joint)
    torch.testing.assert_close(LinearRule(joint=True)(relevance, x, weight, output, bias), expected_joint)
    torch.testing.assert_close(LinearRule(joint=False)(relevance, x, weight), per_term)
    for joint_rule in (True, False):
        at_padding = LinearRule(joint=joint_rule)(relevance, x, weight)[0, 2]
        assert torch.equal(at_padding, torch.zeros(7, dtype=torch.float64))


def test_joint_linear_rule_where_z_plus_u_cancels():
    """One output's products are ``-1, -1, +1e-6``: ``z+ = 1e-6`` against ``u = 2``, and a bias of 1000 on top.

    By hand (the reference's form): the third input gets ``1e-6 / (1e-6 + 1e-9)`` of the output's relevance, the
    others none; the second output (``x W = 1 + 2 + 3``) splits its relevance 1 : 2 : 3. In float32, ``z + u`` is
    ``2e-6`` up to rounding of 2 (``2.4e-7``) without the bias, and lost entirely with it.
    """
    x = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    weight = torch.tensor([[-1.0, -1.0, 1e-6], [1.0, 2.0, 3.0]])
    bias = torch.tensor([1000.0, 0.0])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([[0.0, 0.0, 1e-6 / (1e-6 + 1e-9)], [1 / 6, 2 / 6, 3 / 6]])
    output = torch.nn.functional.linear(x, weight, bias)
    for recorded in ((), (output, bias)):
        found = LinearRule(joint=True)(relevance, x, weight, *recorded)
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)


def test_joint_linear_rule_off_the_cpu_needs_no_host_sync():
    """Off the CPU every row takes the four-matmul form: no ``.nonzero()`` (a host sync per layer on a GPU).

    On the meta device a data-dependent op such as ``.nonzero()`` raises, so the CPU path's row search fails there;
    the device path must run, and on the CPU its form equals the three-matmul rule it replaces.
    """
    torch.manual_seed(0)
    x, weight, relevance = torch.randn(2, 5, 24), torch.randn(16, 24), torch.randn(2, 5, 16)
    bias = torch.randn(16)
    output = torch.nn.functional.linear(x, weight, bias)
    meta = [t.to("meta") for t in (relevance, x, weight, output, bias)]
    with pytest.raises(NotImplementedError):  # what the CPU path's row search calls cannot run on meta tensors
        meta[0].nonzero()
    assert LinearRule(joint=True)(*meta).shape == x.shape
    assert LinearRule(joint=True)(*meta[:3]).shape == x.shape
    direct = _direct_joint_linear_rule(relevance.reshape(-1, 16), x.reshape(-1, 24), weight).reshape(x.shape)
    torch.testing.assert_close(LinearRule(joint=True)(relevance, x, weight, output, bias), direct)


# --- ResidualRule -----------------------------------------------------------------------------------------------


def test_renormalised_residual_split_by_hand():
    # a + b = [1, 1], R = [1, 1]: LRP-0 gives R_a = [2, 1] (sum 3), R_b = [-1, 0] (sum -1). Shares of the total 2:
    # 3/4 * 2 = 1.5 and 1/4 * 2 = 0.5, so R_a = [2, 1] * 1.5 / 3 = [1, 0.5], R_b = [-1, 0] * 0.5 / -1 = [0.5, 0].
    a, b = torch.tensor([[2.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    r_a, r_b = ResidualRule(renormalise=True).split(torch.tensor([[1.0, 1.0]]), a, b)
    torch.testing.assert_close(r_a, torch.tensor([[1.0, 0.5]]))
    torch.testing.assert_close(r_b, torch.tensor([[0.5, 0.0]]))


def test_plain_residual_split_by_hand():
    # a + b = [1, 1], R = [1, 1]: the plain LRP-0 split, R_a = [2, 1], R_b = [-1, 0], with no rescaling.
    a, b = torch.tensor([[2.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    r_a, r_b = ResidualRule(renormalise=False).split(torch.tensor([[1.0, 1.0]]), a, b)
    torch.testing.assert_close(r_a, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(r_b, torch.tensor([[-1.0, 0.0]]))


def test_residual_split_sums_run_per_sample():
    a, b = torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[-1.0, 0.0], [3.0, -1.0]])
    relevance = torch.tensor([[1.0, 1.0], [0.5, 2.0]])
    rule = ResidualRule()
    r_a, r_b = rule.split(relevance, a, b)
    for i in range(2):
        alone = rule.split(relevance[i : i + 1], a[i : i + 1], b[i : i + 1])
        torch.testing.assert_close(r_a[i : i + 1], alone[0])
        torch.testing.assert_close(r_b[i : i + 1], alone[1])
    torch.testing.assert_close((r_a + r_b).sum(1), relevance.sum(1))


def test_residual_split_reads_a_recorded_sum():
    torch.manual_seed(0)
    a, b, relevance = torch.randn(3, 4, 6), torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    for renormalise in (True, False):
        rule = ResidualRule(renormalise=renormalise)
        recorded = rule.split(relevance, a, b, total=a + b)
        for got, expected in zip(recorded, rule.split(relevance, a, b), strict=True):
            torch.testing.assert_close(got, expected)


def test_fork_keeps_the_reference_stabiliser_and_its_inputs():
    x = torch.tensor([0.0, 2.0, -1e-9, -3.0])
    first, second = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.5, 0.5, 0.5, -2.0])
    fork = ResidualRule.fork(first, second, x)
    torch.testing.assert_close(fork, x * safe_divide(first + second, x))
    assert torch.equal(first, torch.ones(4)) and bool(torch.isfinite(fork).all())  # inputs untouched, no inf


# --- ProductRule, EndsRule, safe_divide -------------------------------------------------------------------------


def test_product_rule_by_hand():
    # [1, 2] @ [3, 4]^T = 11 with R = 11: s = 1; R_a = [1*3, 2*4] / 2, R_b = [3*1, 4*2] / 2.
    r_a, r_b = ProductRule()(torch.tensor([[11.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]]))
    torch.testing.assert_close(r_a, torch.tensor([[1.5, 4.0]]))
    torch.testing.assert_close(r_b, torch.tensor([[1.5], [4.0]]))


def test_product_rule_reads_a_recorded_product():
    torch.manual_seed(0)
    a, b, relevance = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6), torch.randn(2, 3, 4, 6)
    for got, expected in zip(ProductRule()(relevance, a, b, a @ b), ProductRule()(relevance, a, b), strict=True):
        torch.testing.assert_close(got, expected)


def test_ends_rule_select_and_mean_by_hand():
    # select: x = [2, -1], R = [1, 3]: x s(R, x) = R where x != 0. mean over tokens [[1], [3]] (sum 4), R = 2:
    # token j gets x_j 2 / 4.
    token = torch.tensor([[2.0, -1.0]])
    torch.testing.assert_close(EndsRule.select(torch.tensor([[1.0, 3.0]]), token), torch.tensor([[1.0, 3.0]]))
    tokens = torch.tensor([[[1.0], [3.0]]])
    torch.testing.assert_close(EndsRule.mean(torch.tensor([[2.0]]), tokens), torch.tensor([[[0.5], [1.5]]]))


def test_safe_divide_is_zero_where_the_denominator_is():
    quotient = safe_divide(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 2.0, -1e-9]))
    torch.testing.assert_close(quotient, torch.tensor([0.0, 0.5, 1e9]))


# --- ZBoxRule (the patch convolution) ----------------------------------------------------------------------------


def test_zbox_rule_by_hand():
    # One channel, a 1x2 kernel with stride 2: x = [1, -1], so L = -1, H = 1; W = [2, -1], W+ = [2, 0], W- = [0, -1].
    # z = x.W - L sum(W+) - H sum(W-) = 3 + 2 + 1 = 6; R = 1: s = 1/6;
    # R_x = x (s W) - L (s W+) - H (s W-) = [2/6, 1/6] + [2/6, 0] + [0, 1/6] = [2/3, 1/3].
    conv = nn.Conv2d(1, 1, kernel_size=(1, 2), stride=(1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[2.0, -1.0]]]]))
    relevance = ZBoxRule()(torch.ones(1, 1, 1, 1), torch.tensor([[[[1.0, -1.0]]]]), conv)
    torch.testing.assert_close(relevance, torch.tensor([[[[2 / 3, 1 / 3]]]]))


def test_zbox_rule_bounds_are_per_image():
    conv = nn.Conv2d(3, 4, kernel_size=2, stride=2)
    x, relevance = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    both = ZBoxRule()(relevance, x, conv)
    torch.testing.assert_close(both[1:], ZBoxRule()(relevance[1:], x[1:], conv))
    x[1] *= 10
    torch.testing.assert_close(ZBoxRule()(relevance, x, conv)[0], both[0])


def test_zbox_rule_equals_the_reference_written_with_autograd():
    """``layers_lrp.Conv2d.relprop`` for 3-channel input, its transposed convolutions as autograd VJPs."""
    conv = nn.Conv2d(3, 6, kernel_size=4, stride=4)
    x, relevance = torch.randn(2, 3, 8, 12), torch.randn(2, 6, 2, 3)
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x).clone().requires_grad_(True)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x).clone().requires_grad_(True)
    inputs = x.clone().requires_grad_(True)
    w_pos, w_neg = conv.weight.clamp(min=0).detach(), conv.weight.clamp(max=0).detach()
    z_x = torch.conv2d(inputs, conv.weight.detach(), stride=4)
    z_low, z_high = torch.conv2d(low, w_pos, stride=4), torch.conv2d(high, w_neg, stride=4)
    scaled = relevance / (z_x - z_low - z_high + 1e-9).detach()
    (g_x,), (g_low,), (g_high,) = (
        torch.autograd.grad(z, t, scaled) for z, t in ((z_x, inputs), (z_low, low), (z_high, high))
    )
    expected = x * g_x - low.detach() * g_low - high.detach() * g_high
    torch.testing.assert_close(ZBoxRule()(relevance, x, conv), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "conv, covered",
    [
        (nn.Conv2d(3, 4, kernel_size=8, stride=8), True),
        (nn.Conv2d(3, 4, kernel_size=(4, 2), stride=(4, 2)), True),
        (nn.Conv2d(3, 4, kernel_size=10, stride=8, padding=1), False),
        (nn.Conv2d(3, 4, kernel_size=8, stride=4), False),
        (nn.Conv2d(4, 4, kernel_size=8, stride=8, groups=2), False),
        (nn.Linear(3, 4), False),
    ],
    ids=["patches", "rectangular", "padded", "overlapping", "grouped", "not_a_conv"],
)
def test_zbox_rule_refuses_all_but_patchifying_convolutions(conv, covered):
    reason = ZBoxRule.refuses(conv)
    if covered:
        assert reason is None
    else:
        assert "the z^B rule needs a patch embedding convolution with stride = kernel size and no padding" in reason
