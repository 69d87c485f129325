"""examples/shapes.py (`make demo`), shortened: the untrained baseline row, the decoys, the closing summary."""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "examples" / "shapes.py"
DEMO_VIT = ("rollout", "generic_attention", "transformer_attribution", "attnlrp", "tokentm")


@pytest.mark.slow
def test_shapes_demo_explains_the_untrained_model_then_every_epoch(tmp_path):
    options = ["--epochs", "1", "--train-size", "128", "--samples", "8", "--logger", "csv", "--out", str(tmp_path)]
    command = [sys.executable, str(SCRIPT), *options]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("rollout ")]
    assert [row[1] for row in rows] == ["init", "0"]
    table = result.stdout.split("\nexplainer ")[1].split("\n(deletion")[0].splitlines()[1:]
    assert {line.split()[0] for line in table} == set(DEMO_VIT)  # the demo's explainers, no other key as a row
    for name in DEMO_VIT:
        assert f"pointing game, {name}: untrained " in result.stdout
        assert f"relevance mass, {name}: untrained " in result.stdout
    assert "val_acc, last epoch: " in result.stdout
    assert (tmp_path / "explanations.png").is_file()


@pytest.mark.slow
def test_shapes_demo_with_a_swin(tmp_path):
    options = ["--epochs", "1", "--train-size", "64", "--samples", "4", "--logger", "csv", "--out", str(tmp_path)]
    command = [sys.executable, str(SCRIPT), *options, "--model", "swin"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "pointing game, layernorm_stats: untrained " in result.stdout
    assert "SwinTransformer" in result.stdout or (tmp_path / "explanations.png").is_file()


def test_the_seed_picks_the_initial_weights():
    spec = importlib.util.spec_from_file_location("shapes_demo", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    first, again, other = (demo.ShapesClassifier(seed=seed).vit.state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def load_demo():
    spec = importlib.util.spec_from_file_location("shapes_demo", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_shortcut_flags_give_region_masks_and_the_alert_rules():
    """--shortcut / --val-shortcut wiring, without training: the watermark's share per split, the regions, the rules."""
    from lightning_vitx.callbacks import ExplainabilityMonitor

    demo = load_demo()
    for options, train_cued, val_cued in [
        ({"shortcut": 1.0}, True, True),
        ({"shortcut": 1.0, "val_shortcut": 0.0}, True, False),
        ({"val_shortcut": 1.0}, None, True),  # the clean control: clean training images, cued validation images
    ]:
        module = demo.ShapesClassifier(train_size=8, val_size=8, **options)
        module.setup("fit")
        for loader, cued in ((module.train_dataloader(), train_cued), (module.val_dataloader(), val_cued)):
            masks = next(iter(loader))[2]
            if cued is None:
                assert isinstance(masks, torch.Tensor), options
            else:
                assert sorted(masks) == ["object", "shortcut"], options
                assert bool(masks["shortcut"].flatten(1).any(1).all()) == cued, options
    plain = demo.ShapesClassifier(train_size=8, val_size=8)
    plain.setup("fit")
    assert isinstance(next(iter(plain.val_dataloader()))[2], torch.Tensor)  # make demo: one unnamed mask, as before
    rules = demo.shortcut_alerts("explain", ["rollout", "attnlrp", "generic_attention"])
    assert rules == {
        f"explain/{name}/relevance_mass/shortcut": {"above": 0.15, "patience": 1}
        for name in ("attnlrp", "generic_attention")
    }
    explainers = ["rollout", "attnlrp", "generic_attention"]
    monitor = ExplainabilityMonitor(explainers=explainers, metrics=["relevance_mass"], alerts=rules)
    assert [rule.key for rule in monitor.alerts.rules] == list(rules)
    with pytest.raises(argparse.ArgumentTypeError, match="share in"):
        demo.share("1.5")
