"""Faults and misconfigurations: a run-time fault never stops training; a configuration mistake stops it at step 0.

Each test is one class of fault. "Training completes" means every epoch ran and ModelCheckpoint saved.
"""

import glob
import math

import lightning as L
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_vitx.metrics.localization as localization
import lightning_vitx.rendering as rendering
from lightning_vitx.callbacks import ExplainabilityMonitor, MonitorConfigError
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes

EPOCHS = 2


class Classifier(L.LightningModule):
    def __init__(self, backbone=None, val_data=None, holder=None):
        super().__init__()
        backbone = backbone if backbone is not None else tiny_vit_for_shapes(32, seed=0)
        if holder == "moduledict":
            self.nets = nn.ModuleDict({"vit": backbone, "head": nn.Linear(2, 2)})
        else:
            self.backbone = backbone
        self.val_data = val_data if val_data is not None else ShapesDataset(16, 32, seed=1)

    @property
    def vit(self):
        return self.nets["vit"] if hasattr(self, "nets") else self.backbone

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        return F.cross_entropy(self.vit(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch[0], batch[1]
        self.log("val_loss", F.cross_entropy(self.vit(images), labels))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(ShapesDataset(32, 32, seed=0), batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.val_data, batch_size=8)


def monitor(**options):
    defaults = dict(explainers=["rollout", "gmar"], metrics=["deletion", "pointing_game"], num_samples=8)
    return ExplainabilityMonitor(**{**defaults, "panel_size": 4, **options})


def fit(tmp_path, callbacks, module=None, sanity=1, checkpoint=True):
    L.seed_everything(0, verbose=False)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[*callbacks, saver] if checkpoint else callbacks,
        default_root_dir=tmp_path,
        limit_train_batches=2,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=sanity,
    )
    trainer.fit(module or Classifier())
    return trainer


def completed(trainer, tmp_path):
    return trainer.current_epoch == EPOCHS and (tmp_path / "ckpt" / "last.ckpt").is_file()


class Edited(Dataset):
    """ShapesDataset samples with one changed by ``edit(index, sample)``."""

    def __init__(self, edit, size=32, count=16):
        self.data, self.edit, self.count = ShapesDataset(count, size, seed=1), edit, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.edit(index, self.data[index])


# -- data faults at run time: training completes ----------------------------------------------------------------


def test_a_nan_image_among_the_panel_samples_is_left_out_and_training_completes(tmp_path):
    def nan_image(index, sample):
        image, label, mask = sample
        return (image.fill_(float("nan")) if index == 1 else image), label, mask

    watcher = monitor()
    with pytest.warns(UserWarning, match="1 held-out samples left out because their images hold NaN or inf"):
        trainer = fit(tmp_path, [watcher], Classifier(val_data=Edited(nan_image)))
    assert completed(trainer, tmp_path)
    assert watcher.held_out.dropped == {"non-finite": 1}
    assert float(trainer.callback_metrics["explain/dropped"]) == 1.0
    assert watcher.samples["ids"].tolist() == [0, 2, 3, 4, 5, 6, 7]  # the global ids of the samples kept
    assert math.isfinite(float(trainer.callback_metrics["explain/rollout/deletion"]))
    assert watcher.last_panel.ids.tolist() == [0, 2, 3, 4]


def test_a_map_with_nan_is_skipped_by_the_metrics_counted_and_drawn(tmp_path, monkeypatch):
    from lightning_vitx.explainers.rollout import AttentionRollout

    original = AttentionRollout.read

    def one_nan_map(self, record):
        maps = original(self, record).clone()
        maps[0, 0, 0] = float("nan")
        return maps

    monkeypatch.setattr(AttentionRollout, "read", one_nan_map)
    watcher = monitor(batch_size=4)  # two explaining passes: two NaN maps of eight
    with pytest.warns(UserWarning, match="1 of 4 maps contain NaN or inf"):
        trainer = fit(tmp_path, [watcher])
    assert completed(trainer, tmp_path)
    assert float(trainer.callback_metrics["explain/rollout/skipped"]) == 2.0
    assert float(trainer.callback_metrics["explain/gmar/skipped"]) == 0.0
    assert math.isfinite(float(trainer.callback_metrics["explain/rollout/deletion"]))
    assert "rollout" in watcher.last_panel.maps


def test_validation_images_of_two_sizes_keep_the_first_size_and_training_completes(tmp_path):
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=2,
        num_classes=3,
        dynamic_img_size=True,
    )
    small, large = ShapesDataset(8, 32, seed=1), ShapesDataset(8, 48, seed=2)

    class TwoSizes(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, index):
            return small[index] if index < 8 else large[index - 8]

    watcher = monitor(num_samples=12)
    with pytest.warns(UserWarning, match=r"left out because they are \[3, 48, 48\], the first were \[3, 32, 32\]"):
        trainer = fit(tmp_path, [watcher], Classifier(vit, val_data=TwoSizes()))
    assert completed(trainer, tmp_path)
    assert watcher.held_out.dropped == {"other-size": 4} and len(watcher.held_out) == 8


def test_a_metric_that_raises_is_nan_that_epoch_and_training_completes(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("metric broken on purpose")

    monkeypatch.setattr(localization.PointingGame, "update", broken)
    with pytest.warns(UserWarning, match="metric 'pointing_game' failed on 'rollout'"):
        trainer = fit(tmp_path, [monitor()])
    assert completed(trainer, tmp_path)
    assert math.isnan(float(trainer.callback_metrics["explain/rollout/pointing_game"]))
    assert math.isfinite(float(trainer.callback_metrics["explain/rollout/deletion"]))
    with pytest.raises(RuntimeError, match="metric broken on purpose"):
        fit(tmp_path / "raise", [monitor(on_error="raise")])


def test_a_panel_that_cannot_be_drawn_warns_and_training_completes(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("cannot draw")

    monkeypatch.setattr(rendering, "panel_figure", broken)
    watcher = monitor()
    # the PNG panel is drawn when it is written: its failure is the logging step's
    with pytest.warns(UserWarning, match="could not be (logged or )?drawn.*: ValueError"):
        trainer = fit(tmp_path, [watcher])
    assert completed(trainer, tmp_path) and len(watcher.history) == EPOCHS


# -- keys a checkpoint callback can rely on ---------------------------------------------------------------------


def test_checkpoint_and_early_stopping_find_their_key_between_explained_epochs(tmp_path):
    watcher = monitor(every_n_epochs=2)
    stopper = EarlyStopping(monitor="explain/rollout/deletion", mode="min", patience=5, check_finite=False)
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="explain/rollout/deletion", mode="min")
    trainer = fit(tmp_path, [watcher, stopper, best])
    assert completed(trainer, tmp_path)
    assert [row["epoch"] for row in watcher.history] == [0.0, 1.0]  # the first epoch, then every second
    assert len(glob.glob(f"{tmp_path}/best/*.ckpt")) == 1


def test_a_disabled_explainer_keeps_its_keys_as_nan(tmp_path, monkeypatch):
    from lightning_vitx.explainers.gmar import GMAR

    monkeypatch.setattr(GMAR, "read", lambda self, record: 1 / 0)
    stopper = EarlyStopping(monitor="explain/gmar/deletion", mode="min", patience=5, check_finite=False)
    with pytest.warns(UserWarning, match="explainer 'gmar' failed and is disabled: ZeroDivisionError"):
        trainer = fit(tmp_path, [monitor(), stopper, ModelCheckpoint(monitor="explain/gmar/deletion")])
    assert completed(trainer, tmp_path)
    assert math.isnan(float(trainer.callback_metrics["explain/gmar/deletion"]))


def test_a_mask_metric_on_batches_without_masks_keeps_its_key_as_nan(tmp_path):
    watcher = monitor(batch_to_inputs=no_masks)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "best", monitor="explain/rollout/pointing_game", mode="max")
    trainer = fit(tmp_path, [watcher, checkpoint])
    assert completed(trainer, tmp_path)
    assert math.isnan(float(trainer.callback_metrics["explain/rollout/pointing_game"]))
    assert math.isfinite(float(trainer.callback_metrics["explain/rollout/deletion"]))


def test_a_checkpoint_watching_a_key_never_logged_fails_at_setup(tmp_path):
    watcher = ExplainabilityMonitor(explainers=["rollout"], metrics=["deletion"], num_samples=4)
    with pytest.raises(MonitorConfigError, match=r"ModelCheckpoint\(monitor='explain/gmar/deletion'\) watches a key"):
        fit(tmp_path, [watcher, ModelCheckpoint(monitor="explain/gmar/deletion")], checkpoint=False)


# -- configuration mistakes: fail before the first training step ------------------------------------------------


def numpy_inputs(batch):
    images, labels, masks = batch
    return images.numpy(), labels, masks


def small_masks(batch):
    images, labels, masks = batch
    return images, labels, masks[:, ::2, ::2]


def no_masks(batch):
    return batch[0], batch[1], None


def no_labels(batch):
    return batch[0], None, None


@pytest.mark.parametrize("sanity", [1, 0], ids=["sanity-check", "no-sanity-check"])
@pytest.mark.parametrize(
    "options, message",
    [
        (dict(batch_to_inputs=numpy_inputs), r"batch_to_inputs must return .*images must be a float tensor.*ndarray"),
        (dict(batch_to_inputs=small_masks), r"masks must be None, a tensor \[8, 32, 32\].*got a torch.bool tensor"),
        (dict(batch_to_inputs=no_labels, target="label"), r"target='label'\) needs labels"),
        (dict(model_attribute="student"), r"model_attribute='student': the LightningModule has no such submodule"),
        (dict(explainers={"rollout": {"start_layer": 7}}), r"explainers=\.\.\.\): start_layer must be an int"),
    ],
    ids=["numpy", "mask-size", "no-labels", "no-such-model", "explainer-option"],
)
def test_a_configuration_mistake_fails_before_the_first_step(tmp_path, options, message, sanity):
    trainer_box = {}

    class Recorder(L.Callback):
        def setup(self, trainer, pl_module, stage):
            trainer_box["trainer"] = trainer

    with pytest.raises(MonitorConfigError, match=message):
        fit(tmp_path, [Recorder(), monitor(**options)], sanity=sanity)
    assert trainer_box["trainer"].global_step == 0


# -- finding the model --------------------------------------------------------------------------------------------


def test_a_model_in_a_module_dict_or_behind_torch_compile_is_found(tmp_path):
    module = Classifier(holder="moduledict")
    for options in [{}, {"model_attribute": "nets.vit"}]:
        watcher = monitor(**options)
        fit(tmp_path / str(len(options)), [watcher], module, checkpoint=False)
        assert watcher.model is module.nets["vit"]
    compiled = Classifier(backbone=torch.compile(tiny_vit_for_shapes(32, seed=0), backend="eager"))
    watcher = monitor()
    trainer = fit(tmp_path / "compiled", [watcher], compiled, checkpoint=False)
    assert watcher.model is compiled.backbone._orig_mod
    assert math.isfinite(float(trainer.callback_metrics["explain/rollout/deletion"]))


# -- several monitors ---------------------------------------------------------------------------------------------


def test_two_monitors_with_their_own_names_log_save_and_restore_apart(tmp_path):
    first, second = monitor(), monitor(name="teacher", explainers=["rollout"], num_samples=4)
    trainer = fit(tmp_path, [first, second])
    assert completed(trainer, tmp_path)
    assert {"explain/gmar/deletion", "teacher/rollout/deletion"} <= set(trainer.callback_metrics)
    assert len(first.samples["ids"]) == 8 and len(second.samples["ids"]) == 4
    restored_first, restored_second = monitor(), monitor(name="teacher", explainers=["rollout"], num_samples=4)
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    restored_first.load_state_dict(checkpoint["callbacks"][first.state_key])
    restored_second.load_state_dict(checkpoint["callbacks"][second.state_key])
    assert first.state_key != second.state_key
    assert len(restored_second.samples["ids"]) == 4 and len(restored_first.history) == EPOCHS
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ExplainabilityMonitor(name="explain/")


def test_tensors_made_from_numpy_arrays_are_accepted(tmp_path):
    def from_numpy(batch):
        images, labels, masks = batch
        return torch.from_numpy(np.asarray(images)), labels, masks

    trainer = fit(tmp_path, [monitor(batch_to_inputs=from_numpy)], checkpoint=False)
    assert "explain/rollout/deletion" in trainer.callback_metrics
