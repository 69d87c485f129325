"""Each method against hand-computed cases and against the explicit matrix chain (kept here only, as an oracle)."""

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import Capture, CaptureNeeds, DenseAttention, TokenLayout, capture_pass, detect
from lightning_vitx.explainers._propagation import discard_lowest

# Three tokens: one class token and a 1x2 patch grid. Rows are queries, columns keys.
A1 = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.0, 0.5, 0.5]])
A2 = torch.tensor([[0.2, 0.4, 0.4], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
A2_OTHER_HEAD = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
LAYOUT = TokenLayout(num_prefix_tokens=1, grid_size=(1, 2), readout="token", readout_tokens=(0,))


def hand_record(attentions, grads=None):
    return Capture(
        layout=LAYOUT,
        logits=torch.zeros(1, 7),
        target=torch.zeros(1, dtype=torch.long),
        attentions=[a[None] for a in attentions],  # [1, heads, 3, 3]
        geometries=[DenseAttention(1, (1, 2))] * len(attentions),
        attention_grads=None if grads is None else [g[None] for g in grads],
    )


@pytest.fixture(scope="module")
def two_block_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=7)


def test_rollout_two_layer_hand_computation(two_block_vit):
    record = hand_record([A1[None], A2[None]])
    # Â = 0.5 (A + I); R = Â2 Â1; row 0 of R = [0.47, 0.38, 0.15]  (worked by hand)
    maps = X.create("rollout", two_block_vit).read(record)
    torch.testing.assert_close(maps, torch.tensor([[[0.38, 0.15]]]))
    # start_layer=1 keeps block 2 only: row 0 of Â2 = [0.6, 0.2, 0.2]
    maps = X.create("rollout", two_block_vit, start_layer=1).read(record)
    torch.testing.assert_close(maps, torch.tensor([[[0.2, 0.2]]]))


def test_rollout_max_fusion_row_normalises(two_block_vit):
    record = hand_record([torch.stack([A1, A1]), torch.stack([A2, A2_OTHER_HEAD])])
    # max over heads of block 2, + I: row 0 = [1.6, 0.4, 0.4] / 2.4 = [2/3, 1/6, 1/6]
    # times Â1 = 0.5 (A1 + I): [2/3*0.75 + 1/6*0.1, 2/3*0.25 + 1/6*0.9 + 1/6*0.25, 1/6*0.75]
    maps = X.create("rollout", two_block_vit, head_fusion="max").read(record)
    torch.testing.assert_close(maps, torch.tensor([[[0.358333, 0.125]]]))


def test_generic_attention_hand_computation(two_block_vit):
    ones = torch.ones(3, 3)
    negative = ones.clone()
    negative[0, 1] = -1.0  # clamps block 1's entry (0, 1) to zero
    record = hand_record([A1[None], A2[None]], grads=[negative[None], ones[None]])
    # e0 (I + A2) = [1.2, 0.4, 0.4]; times (I + Ā1) with Ā1[0, 1] = 0 -> [1.88, 0.92, 0.6]
    maps = X.create("generic_attention", two_block_vit).read(record)
    torch.testing.assert_close(maps, torch.tensor([[[0.92, 0.6]]]))


def test_gmar_head_weights_and_rollout(two_block_vit):
    grads = [torch.stack([torch.full((3, 3), 1 / 9), torch.full((3, 3), -3 / 9)])] * 2  # L1 norms 1 and 3
    record = hand_record([torch.stack([A1, A1]), torch.stack([A2, A2_OTHER_HEAD])], grads=grads)
    explainer = X.create("gmar", two_block_vit)
    torch.testing.assert_close(explainer.head_weights(record.attention_grads[0]), torch.tensor([[0.25, 0.75]]))
    # block 2: 0.25 A2 + 0.75 A2_OTHER_HEAD, row 0 = [0.5, 0.25, 0.25]; Â row 0 = [0.75, 0.125, 0.125]
    # times Â1: [0.75*0.75 + 0.125*0.1, 0.75*0.25 + 0.125*0.9 + 0.125*0.25, 0.125*0.75]
    torch.testing.assert_close(explainer.read(record), torch.tensor([[[0.33125, 0.09375]]]))
    # L2 norms: sqrt(9 * (1/9)^2) = 1/3 and 1 -> the same 1:3 weights
    l2 = X.create("gmar", two_block_vit, norm="l2")
    torch.testing.assert_close(l2.head_weights(record.attention_grads[0]), torch.tensor([[0.25, 0.75]]))
    zero = l2.head_weights(torch.zeros(1, 2, 3, 3))
    torch.testing.assert_close(zero, torch.tensor([[0.5, 0.5]]))


def test_gradcam_hand_computation(two_block_vit):
    grad_h1 = torch.zeros(3, 3)
    grad_h1[0, 1:] = torch.tensor([1.0, 3.0])  # alpha = 2
    grad_h2 = torch.zeros(3, 3)
    grad_h2[0, 1:] = torch.tensor([-1.0, 0.0])  # alpha = -0.5
    record = hand_record([torch.stack([A1, A1]), torch.stack([A2, A2_OTHER_HEAD])], grads=[grad_h1[None]] * 2)
    record.attention_grads[1] = torch.stack([grad_h1, grad_h2])[None]
    # heads' class rows over patches: [0.4, 0.4] and [0.2, 0.2]; mean_h(alpha_h a_h) = (0.8 - 0.1) / 2 = 0.35
    maps = X.create("gradcam", two_block_vit).read(record)
    torch.testing.assert_close(maps, torch.tensor([[[0.35, 0.35]]]))


def test_raw_attention_reads_distilled_and_avgpool_rows(models, make_images):
    images = make_images(224, batch=2)
    for case, rows in [("deit_distilled", [0, 1]), ("avgpool", None)]:
        model = models[case]
        record = capture_pass(detect(model), images)
        last = record.attentions[-1].mean(dim=1)
        readout = last[:, rows].mean(dim=1) if rows else last.mean(dim=1)
        expected = readout[:, record.layout.num_prefix_tokens :].reshape(2, 14, 14)
        torch.testing.assert_close(X.create("raw_attention", model).read(record), expected)


def chain(matrices):
    """Explicit product M_L ... M_1 (later blocks on the left): O(L N^3), a test oracle only."""
    result = torch.eye(matrices[0].shape[-1]).expand_as(matrices[0])
    for matrix in matrices:
        result = matrix @ result
    return result


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "registers", "avgpool"])
def test_vector_propagation_equals_matrix_chain(case, models, make_images):
    model = models[case]
    record = capture_pass(detect(model), make_images(224, batch=2), needs=CaptureNeeds(gradients=True))
    w = record.readout_weights()
    eye = torch.eye(record.layout.num_tokens)
    k = record.layout.num_prefix_tokens

    def readout(matrix):
        return record.layout.patch_map(torch.einsum("bn,bnm->bm", w, matrix))

    # rollout, max fusion, 50% discarded, from block 2
    fused = [discard_lowest(a.amax(dim=1), 0.5, k) + eye for a in record.attentions[2:]]
    rollout = chain([m / m.sum(dim=-1, keepdim=True) for m in fused])
    explainer = X.create("rollout", model, head_fusion="max", discard_ratio=0.5, start_layer=2)
    torch.testing.assert_close(explainer.read(record), readout(rollout), rtol=1e-4, atol=1e-6)
    # Chefer 2021b generic rule
    pairs = list(zip(record.attentions, record.attention_grads, strict=True))
    fused = [eye + (g * a).clamp(min=0).mean(dim=1) for a, g in pairs]
    generic = X.create("generic_attention", model).read(record)
    # an avg-pool head's w weighs the patches: its identity-only path (w itself) is left out of the map
    identity = record.layout.patch_map(w) if case == "avgpool" else 0.0
    expected = readout(chain(fused)) - identity
    torch.testing.assert_close(generic, expected, rtol=1e-4, atol=1e-6 * max(1.0, float(expected.abs().max())))
    # GMAR
    gmar = X.create("gmar", model, norm="l2")
    fused = [0.5 * eye + 0.5 * (gmar.head_weights(g)[..., None, None] * a).sum(dim=1) for a, g in pairs]
    torch.testing.assert_close(gmar.read(record), readout(chain(fused)), rtol=1e-4, atol=1e-6)


def test_discard_lowest_protects_prefix_rows_and_columns():
    matrix = torch.tensor([[[0.1, 0.2, 0.3], [0.05, 0.4, 0.6], [0.01, 0.9, 0.02]]])
    # 4 candidates (patch x patch): 0.4, 0.6, 0.9, 0.02; half of them (0.02 and 0.4) are zeroed
    expected = torch.tensor([[[0.1, 0.2, 0.3], [0.05, 0.0, 0.6], [0.01, 0.9, 0.0]]])
    torch.testing.assert_close(discard_lowest(matrix, 0.5, num_prefix_tokens=1), expected)
    torch.testing.assert_close(discard_lowest(matrix, 0.0, num_prefix_tokens=1), matrix)


def test_gmar_head_output_gradients(models, make_images):
    model = models["vit"]
    images = make_images(224, batch=2)
    record = capture_pass(detect(model), images, needs=CaptureNeeds(gradients=True, head_outputs=True))
    explainer = X.create("gmar", model, gradient_source="head_output")
    maps = explainer(images)
    torch.testing.assert_close(maps, explainer.read(record))
    assert not torch.allclose(maps, X.create("gmar", model)(images))
