"""The BEiT adapter: the recorded attention and the readouts' maps equal a dense per-image oracle in which the
relative position bias is looked up from the model's table by an index written out here."""

import sys
from pathlib import Path

import pytest
import timm
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import BeitAdapter, TokenLayout, capture_pass, detect

sys.path.insert(0, str(Path(__file__).parent))
from dense_oracle import assert_attention_equals, peak, per_image_attention, readout_row, rollout_oracle  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
CASES = {
    "beit": {},  # a bias table per block, layer scale, average-pool head
    "shared_bias": {"use_rel_pos_bias": False, "use_shared_rel_pos_bias": True, "global_pool": "token"},
}


def make_beit(case: str, seed: int = 0):
    torch.manual_seed(seed)
    return peak(timm.create_model("beit_base_patch16_224", pretrained=False, **TINY, **CASES[case]))


def relative_index(rows: int, cols: int) -> torch.Tensor:
    """``[N+1, N+1]`` rows of BEiT's bias table: patch pairs by their offset ``(dr, dc)``, then three entries
    for class -> patch, patch -> class and class -> class."""
    offsets = (2 * rows - 1) * (2 * cols - 1)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    index = torch.zeros(len(cells) + 1, len(cells) + 1, dtype=torch.long)
    for i, (ri, ci) in enumerate(cells):
        for j, (rj, cj) in enumerate(cells):
            index[i + 1, j + 1] = (ri - rj + rows - 1) * (2 * cols - 1) + (ci - cj + cols - 1)
    index[0, 1:], index[1:, 0], index[0, 0] = offsets, offsets + 1, offsets + 2
    return index


def beit_logits(model):
    index = relative_index(*model.patch_embed.grid_size)

    def logits(block, x):
        attn, h = block.attn, block.norm1(x)[0]  # [N, C]
        w_q, w_k, _ = attn.qkv.weight.chunk(3)
        q = (h @ w_q.T + attn.q_bias).reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1)
        k = (h @ w_k.T).reshape(h.shape[0], attn.num_heads, -1).transpose(0, 1)  # BEiT's keys have no bias
        table = (model.rel_pos_bias or attn).relative_position_bias_table  # [offsets + 3, heads]
        return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + table[index].permute(2, 0, 1)

    return logits


def oracle(model, images):
    def tokens(image):
        x = torch.cat([model.cls_token, model.patch_embed(image)], dim=1)
        return x + model.pos_embed if model.pos_embed is not None else x  # beit_base: relative positions only

    shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    run = lambda block, x: block(x, shared_rel_pos_bias=shared)  # noqa: E731
    return per_image_attention(model, images, tokens, beit_logits(model), run)


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_attention_equals_the_dense_bias_oracle(case):
    model = make_beit(case)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    record = capture_pass(detect(model), images)
    expected = oracle(model, images)
    assert_attention_equals(record.attentions, expected)


@pytest.mark.parametrize("case", list(CASES))
def test_readout_maps_equal_the_dense_oracle(case):
    model = make_beit(case)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    attentions = oracle(model, images)
    row = readout_row(2, attentions[0].shape[-1], 1, model.global_pool)
    rollout = rollout_oracle(attentions, row)[:, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("rollout", model)(images), rollout, rtol=1e-5, atol=1e-7)
    raw = torch.einsum("bn,bnm->bm", row, attentions[-1].mean(dim=1))[:, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(X.create("raw_attention", model)(images), raw, rtol=1e-5, atol=1e-7)


def test_layer_scale_is_in_the_token_states():
    """The attention branch tokentm reads is the scaled one: ``gamma_1 * attn(norm1(x))``."""
    from lightning_vitx.adapters import CaptureNeeds

    model = make_beit("beit")
    images = torch.randn(1, 3, 32, 32)
    record = capture_pass(detect(model), images, needs=CaptureNeeds(token_states=True))
    block, states = model.blocks[0], record.token_states[0]
    with torch.no_grad():
        branch = block.gamma_1 * block.attn(block.norm1(states["input"]))
    torch.testing.assert_close(states["attn"], branch, rtol=0, atol=1e-6)
    torch.testing.assert_close(states["mid"], states["input"] + branch, rtol=0, atol=1e-6)


def test_layout_and_refusals():
    model = make_beit("beit")
    adapter = detect(model)
    assert isinstance(adapter, BeitAdapter) and adapter.family == "beit"
    assert adapter.layout(torch.zeros(1, 3, 32, 32)) == TokenLayout(1, (4, 4), "avg", ())
    with pytest.raises(ValueError, match="takes 32x32 images"):
        adapter.layout(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match=r"attnlrp cannot explain this timm\.models\.beit\.Beit.*'generic_attention'"):
        X.create("attnlrp", model)
    model.reset_classifier(5, global_pool="")
    with pytest.raises(ValueError, match=r"timm\.models\.beit\.Beit with global_pool=''"):
        X.create("rollout", model)
