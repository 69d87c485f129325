"""The last faults (the faults issue's items 1, 3, 5, 7, 9): each reproduced first, then a clear error or a count."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import lightning_vitx.metrics as M
from lightning_vitx.callbacks import ExplainabilityMonitor, MonitorConfigError
from lightning_vitx.data import ShapesDataset, tiny_vit_for_shapes
from lightning_vitx.rendering import panel_figure


class Classifier(L.LightningModule):
    def __init__(self, val_data=None):
        super().__init__()
        self.backbone = tiny_vit_for_shapes(32, seed=0)
        self.val_data = val_data if val_data is not None else ShapesDataset(16, 32, seed=1)

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        return F.cross_entropy(self.backbone(images), labels)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self.backbone(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(ShapesDataset(16, 32, seed=0), batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.val_data, batch_size=8)


class Empty(Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, index):
        raise IndexError(index)


def monitor(**options):
    return ExplainabilityMonitor(**{"explainers": ["rollout"], "metrics": ["deletion"], "num_samples": 4, **options})


def fit(tmp_path, callbacks, module=None, sanity=0, epochs=1):
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        limit_train_batches=1,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        num_sanity_val_steps=sanity,
    )
    trainer.fit(module or Classifier())
    return trainer


def test_an_empty_validation_loader_without_a_sanity_check_does_not_crash_the_fit(tmp_path):
    # before: a bare StopIteration from on_fit_start; Lightning itself only warns about an empty loader
    trainer = fit(tmp_path, [monitor()], Classifier(val_data=Empty()))
    assert trainer.current_epoch == 1


def test_an_empty_held_out_dataloader_is_a_configuration_error(tmp_path):
    # before: NaN for every score, every epoch, without a warning (and an empty loader fell through to validation)
    with pytest.raises(MonitorConfigError, match="dataloader=...\\) holds no batch"):
        fit(tmp_path, [monitor(dataloader=DataLoader(Empty(), batch_size=4))])


def test_two_monitors_under_one_name_are_a_configuration_error(tmp_path):
    # before: explain/time_s, pictures and PNG files of the two overwrote each other silently
    first, second = monitor(), monitor(explainers=["gmar"])
    with pytest.raises(MonitorConfigError, match="two ExplainabilityMonitors share name='explain'"):
        fit(tmp_path, [first, second])
    # differing only by model_attribute: the same error (before: Lightning's "state_key must be unique")
    with pytest.raises(MonitorConfigError, match="share name='explain'"):
        fit(tmp_path, [monitor(model_attribute="backbone"), monitor()])


def test_a_binary_png_mask_of_0_and_255_is_the_object_not_void():
    images = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :2, :2] = 255  # a 0/255 PNG mask of the top-left patch
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    metric = M.create("pointing_game")
    metric.update(torch.nn.Identity(), images, maps, None, mask)  # before: "no object pixel", NaN
    assert float(metric.compute()["score"]) == 1.0
    labelled = mask.clone()
    labelled[0, 3, 3] = 3  # a class label beside the 255s: a segmentation mask, 255 is void again
    segmentation = M.create("pointing_game")
    segmentation.update(torch.nn.Identity(), images, maps, None, labelled)
    assert float(segmentation.compute()["score"]) == 0.0  # the object is the pixel of class 3 only
    # a mask with no object pixel: the warning says what counts and how to change it
    with pytest.warns(UserWarning, match="ignore_index=255 are not object \\(pass ignore_index=None"):
        M.create("pointing_game").update(torch.nn.Identity(), images, maps, None, torch.zeros_like(mask))


def test_on_error_raise_fails_fast_on_a_nan_held_out_image(tmp_path):
    data = ShapesDataset(16, 32, seed=1)

    class WithNaN(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, index):
            image, label, mask = data[index]
            return (image * float("nan") if index == 1 else image), label, mask

    # before: dropped with a warning, training went on
    with pytest.raises(ValueError, match="on_error='raise'.*1 held-out samples would be left out"):
        fit(tmp_path, [monitor(on_error="raise")], Classifier(val_data=WithNaN()))


def test_a_nan_map_is_marked_nan_not_all_zero():
    maps = torch.stack([torch.full((2, 2), float("nan")), torch.zeros(2, 2), torch.eye(2)])
    marks = panel_figure(torch.zeros(3, 3, 8, 8), {"rollout": maps}, (0.5,) * 3, (0.5,) * 3).texts
    assert "NaN" in marks and "all zero" in marks and marks.count("all zero") == 1


def test_checkpoints_rank_only_explained_epochs(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    key = "explain/rollout/deletion"
    # before: 2-0.5393.ckpt and 3-0.5393.ckpt kept; epoch 3 was never explained, it carried epoch 2's score
    ranking = ModelCheckpoint(dirpath=tmp_path / "a", monitor=key, save_top_k=2, filename="{epoch}")
    with pytest.raises(MonitorConfigError, match="every_n_epochs=3"):
        fit(tmp_path, [monitor(every_n_epochs=3), ranking])
    # the documented pattern: save on explained epochs only
    aligned = ModelCheckpoint(dirpath=tmp_path / "b", monitor=key, save_top_k=2, every_n_epochs=3, filename="{epoch}")
    watcher = monitor(every_n_epochs=3)
    fit(tmp_path, [watcher, aligned], epochs=6)
    explained = {int(row["epoch"]) for row in watcher.history}
    saved = {int(path.stem.split("=")[1]) for path in (tmp_path / "b").glob("*.ckpt")}
    assert explained == {0, 2, 5} and saved and saved <= explained


def test_resume_with_another_explainer_list_or_name_keeps_what_still_matches(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = monitor(explainers=["rollout", "gmar"])
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, [first, saver], epochs=1)
    checkpoint = str(tmp_path / "ckpt" / "last.ckpt")

    def resume(watcher):
        trainer = L.Trainer(
            max_epochs=2,
            accelerator="cpu",
            devices=1,
            logger=False,
            callbacks=[watcher],
            default_root_dir=tmp_path,
            limit_train_batches=1,
            limit_val_batches=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(Classifier(), ckpt_path=checkpoint)
        return watcher

    # another explainer list: before, the whole state was dropped with Lightning's generic message
    with pytest.warns(UserWarning, match=r"explainers changed since the checkpoint: added \['generic_attention'\]"):
        changed = resume(monitor(explainers=["rollout", "generic_attention"]))
    assert torch.equal(changed.samples["images"], first.samples["images"])
    assert [row["epoch"] for row in changed.history] == [0.0, 1.0]  # rollout's history goes on
    assert "explain/rollout/stability" in changed.history[-1]
    # a renamed monitor: its state is the only one in the checkpoint, restored with a warning
    with pytest.warns(UserWarning, match="restoring the monitor state saved as"):
        renamed = resume(monitor(explainers=["rollout", "gmar"], name="explain_v2"))
    assert torch.equal(renamed.samples["images"], first.samples["images"])
