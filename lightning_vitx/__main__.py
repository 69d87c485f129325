r"""``python -m lightning_vitx fit --config callbacks/monitor.yaml ...``: LightningCLI with the monitor presets.

Example (synthetic data, no network)::

    python -m lightning_vitx fit --config callbacks/monitor.yaml \
        --model.model_name vit_tiny_patch16_224 --model.num_classes 3 --model.model_kwargs '{"img_size": 64}' \
        --data ShapesDataModule --trainer.max_epochs 2
"""

from lightning.pytorch.cli import LightningCLI

from lightning_vitx.classification import TimmClassifier


def main() -> None:
    LightningCLI(TimmClassifier, datamodule_class=None, subclass_mode_data=True, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
