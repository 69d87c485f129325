"""The capture pass: what it records, and that it leaves the model exactly as found."""

import pytest
import torch

import lightning_vitx.explainers as X
from lightning_vitx.adapters import CaptureNeeds, capture_pass, detect


def attention_grads_by_backward(oracle, images, score):
    """``(logits, A per block, dscore/dA per block)`` from a plain ``.backward()`` on a copy that keeps each ``A``."""
    kept = []

    def keep(module, inputs, output):
        output.retain_grad()
        kept.append(output)

    for block in oracle.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(keep)
    logits = oracle(images)
    score(logits).backward()
    return logits.detach(), [attention.detach() for attention in kept], [attention.grad for attention in kept]


def test_gradients_match_an_independent_backward(models, make_images, copy_model):
    model = models["deit_distilled"]
    images = make_images(224, batch=2)
    target = torch.tensor([3, 6])
    record = capture_pass(detect(model), images, target, CaptureNeeds(gradients=True, token_states=True))

    logits, kept, grads = attention_grads_by_backward(
        copy_model(model), images, lambda logits: logits.gather(1, target[:, None]).sum()
    )
    torch.testing.assert_close(record.logits, logits)
    for ours, theirs in zip(record.attention_grads, grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    for ours, theirs in zip(record.attentions, kept, strict=True):
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(ours.sum(-1), torch.ones_like(ours[..., 0]))


def test_probability_objective_matches_an_independent_backward(models, make_images, copy_model):
    model = models["vit"]
    images = make_images(224, batch=2)
    target = torch.tensor([3, 6])
    record = capture_pass(detect(model), images, target, CaptureNeeds(gradients=True, objective="probability"))
    assert record.objective == "probability"
    _, _, grads = attention_grads_by_backward(
        copy_model(model), images, lambda logits: logits.softmax(dim=1).gather(1, target[:, None]).sum()
    )
    for ours, theirs in zip(record.attention_grads, grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-8)


def test_token_states_are_consistent(models, make_images):
    record = capture_pass(detect(models["vit"]), make_images(224, batch=1), needs=CaptureNeeds(token_states=True))
    for index, states in enumerate(record.token_states):
        torch.testing.assert_close(states["mid"], states["input"] + states["attn"])
        torch.testing.assert_close(states["output"], states["mid"] + states["mlp"])
        if index:
            torch.testing.assert_close(states["input"], record.token_states[index - 1]["output"])


def snapshot(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "fused": {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, "fused_attn")},
        "checkpointing": model.grad_checkpointing,
        "hooks": {
            n: {attr: list(getattr(m, attr)) for attr in vars(m) if attr.endswith("hooks") or "hooks_" in attr}
            for n, m in model.named_modules()
        },
        "rng": torch.get_rng_state(),
    }


def test_model_left_exactly_as_found(fresh_vit, make_images):
    model = fresh_vit
    model.train()
    model.blocks[1].eval()
    model.blocks[0].attn.fused_attn = True
    model.blocks[1].attn.fused_attn = False
    model.blocks[0].requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
    model.set_grad_checkpointing(True)
    user_calls = []
    model.blocks[2].register_forward_hook(lambda m, i, o: user_calls.append(1))
    images = make_images(224, batch=2)
    with torch.no_grad():
        before_output = model(images)
    before = snapshot(model)

    group = X.create_many(X.available(), model)
    group(images)
    X.create("gmar", model, gradient_source="head_output")(images, 2)
    with pytest.raises(ValueError):
        group(images, target=99)  # raises inside the pass: the flags must still come back

    after = snapshot(model)
    for key in before:
        if key == "params":
            for name in before[key]:
                torch.testing.assert_close(after[key][name], before[key][name], rtol=0, atol=0)
        elif key == "grads":
            for name, grad in before[key].items():
                assert (after[key][name] is None) == (grad is None), name
                if grad is not None:
                    torch.testing.assert_close(after[key][name], grad, rtol=0, atol=0)
        elif key == "rng":
            assert torch.equal(after[key], before[key])
        else:
            assert after[key] == before[key], key
    with torch.no_grad():
        torch.testing.assert_close(model(images), before_output, rtol=0, atol=0)
    # before, the group's capture pass, one pass of each non-readout explainer in the group, gmar's pass, after;
    # the bad target stops before any pass
    own_passes = sum(not X.get_info(name).readout for name in X.available())
    assert len(user_calls) == 4 + own_passes


@pytest.mark.parametrize("name", ["rollout", "transformer_attribution", "lrp"])
def test_attention_that_bypasses_attn_drop_is_one_clear_error(name):
    """Every pass that reads attention through ``attn_drop`` says so the same way (``check_attention_recorded``)."""
    import types

    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, img_size=32)
    explainer = X.create(name, model)
    model.blocks[0].attn.forward = types.MethodType(lambda self, x, **kwargs: x, model.blocks[0].attn)
    with pytest.raises(RuntimeError, match=r"recorded 1 attention maps for 2 blocks: .* attn_drop module"):
        explainer(torch.randn(1, 3, 32, 32))
