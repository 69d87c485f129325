"""The LRP family on Swin and avg-pool ViTs: the window plumbing against a dense oracle, conservation, pixel maps."""

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import lightning_vitx.explainers as X
from lightning_vitx.adapters import detect, explaining
from lightning_vitx.adapters.geometry import WindowedAttention
from lightning_vitx.explainers.lrp import relevance as LRP
from lightning_vitx.explainers.lrp.composites import classifier_heads, explicit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402

NAMES = ["transformer_attribution", "lrp", "partial_lrp"]
# 40 px in 4 px patches: a 10x10 grid in windows of 4 (padded to 12, shifted by 2), merged to 5x5 (padded to 8,
# shifted), merged from an odd grid to 3x3 (one unshifted window of 3).
SWIN = {"img_size": 40, "embed_dim": 16, "depths": (2, 2, 2), "num_heads": (2, 2, 4), "window_size": 4}
# 32 px: 8x8 in windows of 4 (shifted by 2), merged to 4x4 (one window): shift and merging, no padding anywhere
UNPADDED_SWIN = {"img_size": 32, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4}
AVGPOOL = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "depth": 3, "global_pool": "avg"}


def make_swin(seed=0, **kwargs):
    """A tiny random Swin with peaked attention, and nonzero biases and norms, so padding tokens are live keys."""
    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, **{**SWIN, **kwargs})
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            if hasattr(module, "relative_position_bias_table"):
                module.relative_position_bias_table.normal_(0.0, 0.5, generator=generator)
                module.qkv.weight.normal_(0.0, 0.3, generator=generator)
                module.qkv.bias.normal_(0.0, 0.3, generator=generator)
        model.head.fc.weight.normal_(0.0, 0.5, generator=generator)
    return model.eval()


def make_avgpool(class_token=False, fc_norm=None):
    torch.manual_seed(0)
    kwargs = {**AVGPOOL, "class_token": class_token, "fc_norm": fc_norm}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs).eval()


def images(size, batch=3, seed=5):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the permutations, by hand --------------------------------------------------------------------------------------


def test_window_layout_by_hand():
    # A 2x4 grid, windows of 2x2, shifted by (0, 1): rows [0 1 2 3], [4 5 6 7] roll to [1 2 3 0], [5 6 7 4], so the
    # windows hold (1, 2, 5, 6) and (3, 0, 7, 4). Channels follow their tokens; the inverse puts everything back.
    geometry = WindowedAttention(grid_size=(2, 4), window_size=(2, 2), shift_size=(0, 1))
    tokens = torch.arange(8.0)[None, :, None] * torch.tensor([1.0, -1.0])  # [1, 8, 2]
    windows = LRP._to_windows(geometry, tokens)
    torch.testing.assert_close(windows[..., 0], torch.tensor([[1.0, 2, 5, 6], [3, 0, 7, 4]]))
    torch.testing.assert_close(windows[..., 1], -windows[..., 0])
    torch.testing.assert_close(LRP._from_windows(geometry, windows, 1), tokens)


def test_merging_relevance_by_hand():
    # A 3x2 grid merges to 2x1 (the odd grid padded by a row). Children in the channels: (0,0), (1,0), (0,1), (1,1)
    # as (row, column) offsets. With an identity reduction and positive inputs the Linear rule passes R unchanged;
    # coarse (0,0) = [1, 2, 3, 4] -> fine (0,0)=1, (1,0)=2, (0,1)=3, (1,1)=4; coarse (1,0) = [5, 6, 7, 8] -> fine
    # (2,0)=5, (2,1)=7, and 6, 8 fall on the padding row. Row-major 3x2: [1, 3, 2, 4, 5, 7].
    merging = nn.Module()
    merging.reduction = nn.Linear(4, 4, bias=False)
    nn.init.eye_(merging.reduction.weight)
    recorded = {"input": torch.zeros(1, 3, 2, 1), "reduction_input": torch.ones(1, 2, 1, 4)}
    relevance = LRP.merging_relevance(merging, recorded, torch.arange(1.0, 9.0).reshape(1, 2, 4), explicit("chefer"))
    torch.testing.assert_close(relevance, torch.tensor([1.0, 3, 2, 4, 5, 7]).reshape(1, 6, 1))


def test_merging_relevance_undoes_timms_gather():
    """The un-gather is the transpose of PatchMerging's own forward (its vector-Jacobian product) on an odd grid."""
    from timm.models.swin_transformer import PatchMerging

    merging = PatchMerging(dim=3)
    x = torch.randn(1, 5, 3, 3, requires_grad=True)
    gathered = []
    handle = merging.norm.register_forward_hook(lambda m, i, o: gathered.append(i[0]))
    merging(x)
    handle.remove()
    relevance = torch.rand(1, 3 * 2, 12)
    (expected,) = torch.autograd.grad(gathered[0], x, relevance.reshape(1, 3, 2, 12))
    identity = nn.Module()
    identity.reduction = nn.Linear(12, 12, bias=False)
    nn.init.eye_(identity.reduction.weight)
    recorded = {"input": x.detach(), "reduction_input": torch.ones(1, 3, 2, 12)}
    at_input = LRP.merging_relevance(identity, recorded, relevance, explicit("chefer"))
    torch.testing.assert_close(at_input, expected.reshape(1, 15, 3))


# --- against the dense oracle (oracle.py: per image, float64, each block's attention over the padded grid) ------


@pytest.fixture(scope="module")
def oracles():
    model = make_swin()
    exact = copy.deepcopy(model).double()
    batch, target = images(40, batch=2), [1, 3]
    found = {}
    for rule_set in ("chefer", "baseline"):
        found[rule_set] = [oracle.swin_maps(exact, batch[i].double(), target[i], rule_set) for i in range(2)]
    in_float32 = [oracle.swin_maps(model, batch[i], target[i], "baseline")["lrp"] for i in range(2)]
    return model, batch, torch.tensor(target), found, in_float32


@pytest.mark.parametrize("name", NAMES)
def test_windowed_pass_equals_the_dense_oracle(name, oracles):
    """Against the float64 oracle; ``lrp`` as close as the same oracle run in float32 is.

    The baseline rules divide by sums that can nearly cancel (a residual ``x + a``, each Linear sign term's own
    part): through six blocks and two mergings float32 rounding moves ``lrp``'s map by up to ~3% of its largest
    value, in the oracle too (tests/explainers/lrp/test_full.py sees the same on ViT).
    """
    model, batch, target, found, in_float32 = oracles
    maps = X.create(name, model)(batch, target)
    rule_set = "chefer" if name == "transformer_attribution" else "baseline"
    for i in range(2):
        expected = found[rule_set][i][name]
        assert expected.std() > 0
        scale = float(expected.abs().max())
        if name == "lrp":
            error, oracle_error = (maps[i].double() - expected).abs(), (in_float32[i].double() - expected).abs()
            assert error.max() <= 2 * oracle_error.max() + 1e-4 * scale
            assert torch.corrcoef(torch.stack([maps[i].double().flatten(), expected.flatten()]))[0, 1] > 0.999
        elif name == "transformer_attribution":
            # the map is the attention terms alone (the avg-pool readout's constant identity path left out), so
            # float32 gradients' rounding shows at its own scale: ~0.15% of its largest value here
            torch.testing.assert_close(maps[i].double(), expected, rtol=1e-2, atol=3e-3 * scale)
            assert torch.corrcoef(torch.stack([maps[i].double().flatten(), expected.flatten()]))[0, 1] > 0.9999
        else:
            torch.testing.assert_close(maps[i].double(), expected, rtol=1e-3, atol=1e-4 * scale)


def test_chefer_rules_conserve_relevance_but_what_swin_padding_takes(oracles):
    """With alpha 1 and the renormalised residual rule every step keeps the relevance of 1, except what lands on
    padding tokens (window padding after norm1, patch merging's odd-grid padding), which is dropped."""
    *_, found, _ = oracles
    for result in found["chefer"]:
        assert 0.01 < result["dropped"] < 0.5  # the padding is live: its keys carry relevance
        assert result["total"] + result["dropped"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("family", ["swin", "avgpool", "avgpool_class_token"])
def test_chefer_rules_conserve_relevance_block_by_block(family):
    """Block inputs (and Swin's merging inputs) carry the logit's relevance, 1, where no padding drops any."""
    if family == "swin":
        model, size = make_swin(**UNPADDED_SWIN), 32
    else:
        model, size = make_avgpool(class_token=family == "avgpool_class_token"), 32
    composite, heads = explicit("chefer"), classifier_heads(model)
    composite.check(model, "transformer_attribution")
    with explaining(detect(model)), LRP.recording(model, heads) as record, torch.no_grad():
        logits = model(images(size, batch=4))
    with torch.no_grad():
        relevance = LRP.top_relevance(record, heads, logits.argmax(dim=1), composite)
        sums = [relevance.sum(dim=(1, 2))]
        for index in reversed(range(len(record.blocks))):
            _, relevance = LRP.block_relevance(record.modules[index], record.blocks[index], relevance, True, composite)
            sums.append(relevance.sum(dim=(1, 2)))
            if index in record.merges:
                relevance = LRP.merging_relevance(*record.merges[index], relevance, composite)
                sums.append(relevance.sum(dim=(1, 2)))
    assert len(sums) == len(record.blocks) + len(record.merges) + 1
    torch.testing.assert_close(torch.stack(sums), torch.ones(len(sums), 4), rtol=0, atol=1e-4)


# --- the contract on these models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("family", ["swin", "avgpool", "avgpool_fc_norm_off"])
def test_maps_at_the_first_grid_and_batch_equals_one_by_one(name, family):
    """One batch gives each image's own map (1e-5 of the map's scale).

    ``lrp`` on Swin runs on a float64 copy of the model: its baseline rules amplify the float32 rounding by which
    the forward of a batch differs from that of one image to ~2.5e-4 of the scale on this model (1e-7 in float64
    with the rules still in float32: the rounding, not the batching, moves it).
    """
    model = make_swin() if family == "swin" else make_avgpool(fc_norm=False if family.endswith("off") else None)
    size = 40 if family == "swin" else 32
    if (name, family) == ("lrp", "swin"):
        model = model.double()
    explainer = X.create(name, model)
    batch, target = images(size).to(next(model.parameters()).dtype), torch.tensor([0, 4, 2])
    maps = explainer(batch, target)
    assert maps.shape == ((3, 10, 10) if family == "swin" else (3, 4, 4)) and maps.dtype == torch.float32
    assert maps.flatten(1).std(dim=1).gt(0).all()
    single = torch.cat([explainer(batch[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(maps, single, rtol=0, atol=1e-5 * max(1.0, float(single.abs().max())))


def test_swin_maps_at_the_first_stage_grid_of_swin_tiny():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1), num_classes=3)
    for name in NAMES:
        assert X.create(name, model)(images(224, batch=1), 0).shape == (1, 56, 56)


# --- pixel relevance (the z^B rule through the patch convolution) ---------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "swin", "avgpool"])
def test_pixel_relevance_summed_per_patch_is_the_lrp_map(family, tiny_vit):
    model = {"vit": tiny_vit, "swin": make_swin, "avgpool": make_avgpool}[family]()
    size = 40 if family == "swin" else 32
    explainer = X.create("lrp", model)
    batch = images(size, batch=2)
    pixels, maps = explainer.pixel_relevance(batch, 1), explainer(batch, 1)
    assert pixels.shape == (2, size, size) and pixels.dtype == torch.float32
    ph, pw = model.patch_embed.patch_size
    per_patch = pixels.reshape(2, maps.shape[1], ph, maps.shape[2], pw).sum(dim=(2, 4))
    torch.testing.assert_close(per_patch, maps, rtol=1e-4, atol=1e-5 * float(maps.abs().max()))
    assert (pixels < 0).any() and (pixels > 0).any()
    # partial LRP's relevance stops at the last attention map; its pixel map is its rules' full pass, lrp's
    assert torch.equal(X.create("partial_lrp", model).pixel_relevance(batch, 1), pixels)


def test_transformer_attribution_pixel_map_on_swin_against_the_dense_oracle(oracles):
    """Summed over each patch, the relevance at the first block's input under the authors' rules (Swin has no
    position embedding; ``patch_embed.norm`` passes relevance); one batch gives each image's own map."""
    model, batch, target, found, _ = oracles
    explainer = X.create("transformer_attribution", model)
    pixels = explainer.pixel_relevance(batch, target)
    assert pixels.shape == (2, 40, 40) and pixels.dtype == torch.float32
    per_patch = pixels.reshape(2, 10, 4, 10, 4).sum(dim=(2, 4)).double()
    for i in range(2):
        expected = found["chefer"][i]["lrp"]
        in_float32 = oracle.swin_maps(model, batch[i], int(target[i]), "chefer")["lrp"].double()
        assert expected.std() > 0
        # below the attention maps float32 rounding moves the relevance by ~1% of its largest value, the oracle's too
        error, oracle_error = (per_patch[i] - expected).abs().max(), (in_float32 - expected).abs().max()
        assert error <= 2 * oracle_error + 1e-4 * float(expected.abs().max())
        assert torch.corrcoef(torch.stack([per_patch[i].flatten(), expected.flatten()]))[0, 1] > 0.999
    assert (pixels < 0).any() and (pixels > 0).any()
    # on a float64 copy: in float32 the rounding by which a batch's forward differs from one image's moves the map
    # (as for lrp on Swin, test_maps_at_the_first_grid_and_batch_equals_one_by_one)
    explainer, batch = X.create("transformer_attribution", copy.deepcopy(model).double()), batch.double()
    pixels = explainer.pixel_relevance(batch, target)
    single = torch.cat([explainer.pixel_relevance(batch[i : i + 1], target[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(pixels, single, rtol=0, atol=1e-5 * float(single.abs().max()))


# --- the pixel map's refusal (the models' refusals: test_composites.py) ------------------------------------------


def test_pixel_map_refuses_an_overlapping_patch_embedding_and_the_patch_map_works():
    padded_embedding = make_avgpool()  # the z^B rule needs non-overlapping patches: the patch map still works
    padded_embedding.patch_embed.proj = nn.Conv2d(3, 64, kernel_size=10, stride=8, padding=1)
    for name in NAMES:
        explainer = X.create(name, padded_embedding)
        assert explainer(images(32, batch=1), 0).shape == (1, 4, 4)
        with pytest.raises(
            TypeError,
            match=rf"{name}'s pixel map: the z\^B rule needs a patch embedding convolution with stride = kernel size "
            r"and no padding, got Conv2d\(3, 64, kernel_size=\(10, 10\), stride=\(8, 8\), padding=\(1, 1\)\); "
            r"its patch map \(calling the explainer\) works on this model",
        ):
            explainer.pixel_relevance(images(32, batch=1), 0)
