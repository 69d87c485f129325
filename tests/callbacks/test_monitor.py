"""The monitor in real Trainer runs on a tiny ViT and the synthetic shapes (CPU, a few batches)."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import lightning_vitx.explainers as X
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes
from lightning_vitx.explainers.gmar import GMAR


class ShapesClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = tiny_vit_for_shapes(32, seed=0)
        self.losses = []

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        loss = F.cross_entropy(self.backbone(images), labels)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.log("val_loss", F.cross_entropy(self.backbone(images), labels))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(ShapesDataset(64, 32, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ShapesDataset(32, 32, seed=1), batch_size=8)


def fit(tmp_path, callbacks, logger=False, epochs=2, seed=0, ckpt_path=None, module=None):
    L.seed_everything(seed, verbose=False)
    module = module or ShapesClassifier()
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        limit_train_batches=3,
        limit_val_batches=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        num_sanity_val_steps=1,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module


def monitor(**options):
    defaults = dict(
        explainers=["rollout", "gmar"],
        metrics={"deletion": {"steps": 5}, "pointing_game": {}},
        num_samples=12,
        panel_size=4,
    )
    return ExplainabilityMonitor(**{**defaults, **options})


def test_training_is_unchanged_by_the_monitor(tmp_path):
    _, plain = fit(tmp_path / "a", [])
    _, watched = fit(tmp_path / "b", [monitor()])
    assert plain.losses == watched.losses
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_keeps_the_samples_and_the_stability(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = monitor()
    fit(tmp_path, [first, checkpoint], epochs=1)
    second = monitor()
    trainer, _ = fit(
        tmp_path,
        [second, ModelCheckpoint(dirpath=tmp_path / "ckpt2")],
        epochs=2,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert torch.equal(second.samples["images"], first.samples["images"])
    assert "explain/rollout/stability" in trainer.callback_metrics
    # randomization keeps comparing with the first run's first pass, not with the resumed run's first pass
    reference = first.sanity_scores.reference_maps["rollout"]
    assert torch.equal(second.sanity_scores.reference_maps["rollout"], reference)
    assert "explain/rollout/randomization" in second.history[-1]


def test_sanity_scores_every_pass_against_the_first_pass_and_the_runner_up_class(tmp_path):
    watcher = monitor(explainers=["rollout", "generic_attention"])
    trainer, _ = fit(tmp_path, [watcher], epochs=2)
    first, last = watcher.history[0], watcher.history[-1]
    assert "explain/rollout/randomization" not in first  # nothing to compare the first pass with
    assert first["explain/rollout/class_sensitivity"] == 0.0 == last["explain/rollout/class_sensitivity"]
    assert 0.0 < last["explain/generic_attention/class_sensitivity"] <= 2.0
    # randomization: per-sample Spearman (mean ranks for ties) of the last pass's maps with the first pass's
    reference, maps = watcher.sanity_scores.reference_maps["rollout"], watcher.last_maps["rollout"]
    expected = torch.tensor(
        [float(stats_spearman(a.flatten(), b.flatten())) for a, b in zip(maps, reference, strict=True)]
    ).mean()
    assert last["explain/rollout/randomization"] == pytest.approx(float(expected), abs=1e-5)
    assert float(trainer.callback_metrics["explain/rollout/randomization"]) == pytest.approx(float(expected), abs=1e-5)
    assert watcher.settings()["class_sensitive"] == {"rollout": False, "generic_attention": True}


def stats_spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman written out: Pearson of the mean ranks (ties averaged), in float64."""

    def ranks(x):
        order = x.double().argsort()
        r = torch.empty_like(order, dtype=torch.float64)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in x.unique():
            tied = x == value
            r[tied] = r[tied].mean()
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return (ra * rb).sum() / (ra.norm() * rb.norm())


def test_sanity_off_logs_no_sanity_key(tmp_path):
    watcher = monitor(sanity=False)
    trainer, _ = fit(tmp_path, [watcher], epochs=1)
    assert not any(k.endswith(("/randomization", "/class_sensitivity")) for k in trainer.callback_metrics)
    assert watcher.settings()["sanity"] is False


def test_a_failing_explainer_warns_once_and_training_completes(tmp_path, monkeypatch):
    def broken(self, record):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(GMAR, "read", broken)
    with pytest.warns(UserWarning, match="explainer 'gmar' failed and is disabled: RuntimeError"):
        trainer, _ = fit(tmp_path, [monitor()])
    assert trainer.current_epoch == 2
    assert "explain/rollout/deletion" in trainer.callback_metrics
    assert torch.isnan(trainer.callback_metrics["explain/gmar/deletion"])  # the key stays, for checkpoint callbacks
    with pytest.raises(RuntimeError, match="broken on purpose"):
        fit(tmp_path, [monitor(on_error="raise")])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown explainer 'rolout'"):
        ExplainabilityMonitor(explainers=["rolout"])
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        ExplainabilityMonitor(metrics=["auc"])
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        ExplainabilityMonitor(metrics={"auc": {}})
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        ExplainabilityMonitor(num_samples=0)
    with pytest.raises(ValueError, match=r"target must be one of \['pred', 'label'\]"):
        ExplainabilityMonitor(target="gt")
    with pytest.raises(TypeError, match="dataloader must be a torch.utils.data.DataLoader or None, got ShapesDataset"):
        ExplainabilityMonitor(dataloader=ShapesDataset(4, 32))


def test_the_same_monitor_across_validate_calls_under_inference_mode(tmp_path):
    # trainer.validate runs under torch.inference_mode (fit's validation under no_grad): gradients must still flow
    watcher = monitor()
    module = ShapesClassifier()
    for _ in range(2):
        validate(tmp_path, watcher, module)  # Trainer(inference_mode=True), the default
    assert len(watcher.history) == 2
    assert "explain/rollout/stability" in watcher.history[-1]


def test_all_explainers_share_one_capture_pass_per_batch(tmp_path, monkeypatch):
    import lightning_vitx.explainers.base as base

    passes = []
    original = base.capture_pass
    monkeypatch.setattr(base, "capture_pass", lambda *a, **k: passes.append(1) or original(*a, **k))
    fit(tmp_path, [monitor(batch_size=12, sanity=False)], epochs=1)  # 12 samples, one batch, two explainers
    assert len(passes) == 1
    passes.clear()
    fit(tmp_path, [monitor(batch_size=12)], epochs=1)  # the runner-up class of the panel: one more shared pass
    assert len(passes) == 2


def validate(tmp_path, watcher, module, limit_val_batches=3):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[watcher],
        limit_val_batches=limit_val_batches,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(module, verbose=False)


def test_a_dataloader_gives_the_scores_of_the_same_validation_samples(tmp_path):
    module = ShapesClassifier()
    by_batches = monitor()
    validate(tmp_path, by_batches, module)
    # 12 samples in batches of 5 from a longer loader; one validation batch (8 samples) would not hold them
    by_loader = monitor(dataloader=DataLoader(ShapesDataset(40, 32, seed=1), batch_size=5))
    validate(tmp_path, by_loader, module, limit_val_batches=1)
    assert by_loader.samples["ids"].tolist() == list(range(12))
    assert torch.equal(by_loader.samples["images"], by_batches.samples["images"])
    (expected,), (scores,) = by_batches.history, by_loader.history
    assert scores.keys() == expected.keys() and len(expected) >= 5
    for key, value in expected.items():
        if key != "explain/time_s":
            assert scores[key] == pytest.approx(value, abs=1e-6), key
    assert by_loader.last_panel.ids.tolist() == [0, 1, 2, 3]
    for name, maps in by_batches.last_panel.maps.items():
        torch.testing.assert_close(by_loader.last_panel.maps[name], maps)


def test_a_shuffled_dataloader_is_read_once_and_restored_from_the_state(tmp_path):
    module = ShapesClassifier()
    loader = DataLoader(ShapesDataset(40, 32, seed=1), batch_size=5, shuffle=True)
    first = monitor(dataloader=loader)
    validate(tmp_path, first, module)
    images = first.samples["images"].clone()
    validate(tmp_path, first, module)
    assert torch.equal(first.samples["images"], images)
    assert first.history[-1]["explain/rollout/stability"] == pytest.approx(1.0)  # same samples, same model
    restored = monitor(dataloader=loader)
    restored.load_state_dict(first.state_dict())
    validate(tmp_path, restored, module)
    assert torch.equal(restored.samples["images"], images)
    assert restored.history[-1]["explain/gmar/stability"] == pytest.approx(1.0)


SWIN = {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4, "img_size": 32}


class SwinShapes(TimmClassifier):
    def train_dataloader(self):
        return DataLoader(ShapesDataset(32, 32, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ShapesDataset(16, 32, seed=1), batch_size=8)


def test_monitor_explains_and_scores_a_swin(tmp_path):
    module = SwinShapes("swin_tiny_patch4_window7_224", num_classes=3, model_kwargs=SWIN)
    names = ["rollout", "raw_attention", "gradcam", "generic_attention", "gmar"]
    watcher = monitor(explainers=names, metrics={"deletion": {"steps": 4}, "pointing_game": {}}, num_samples=6)
    trainer, _ = fit(tmp_path, [watcher], epochs=1, module=module)
    for name in names:
        assert f"explain/{name}/deletion" in trainer.callback_metrics
        assert 0.0 <= float(trainer.callback_metrics[f"explain/{name}/pointing_game"]) <= 1.0
    # Maps at Swin's first-stage grid (32 / 4 = 8), equal to the explainers called directly on the same samples.
    images = torch.stack([torch.as_tensor(ShapesDataset(16, 32, seed=1)[i][0]) for i in range(6)])
    expected = X.create("rollout", module.model)(images)
    torch.testing.assert_close(watcher.last_maps["rollout"], expected, rtol=1e-5, atol=1e-7)


def test_conservation_of_the_lrp_maps_is_their_sum_over_the_seed(tmp_path):
    watcher = monitor(explainers={"attnlrp": {"gamma": 0.0, "conv_gamma": 0.0}, "lrp": {}, "rollout": {}})
    trainer, module = fit(tmp_path, [watcher], epochs=1)
    model = module.backbone.eval()
    images = watcher.samples["images"]
    with torch.no_grad():
        logits = model(images)
    target = logits.argmax(1)
    attnlrp = X.create("attnlrp", model, gamma=0.0, conv_gamma=0.0)(images, target)
    expected = (attnlrp.flatten(1).double().sum(1) / logits.gather(1, target[:, None])[:, 0].double()).mean()
    assert float(trainer.callback_metrics["explain/attnlrp/conservation"]) == pytest.approx(float(expected), abs=1e-5)
    lrp = X.create("lrp", model)(images, target).flatten(1).double().sum(1).mean()  # seeded with 1
    assert float(trainer.callback_metrics["explain/lrp/conservation"]) == pytest.approx(float(lrp), rel=1e-5)
    assert "explain/rollout/conservation" not in trainer.callback_metrics
