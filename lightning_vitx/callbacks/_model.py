"""Finding the timm model the monitor explains inside a LightningModule."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch import nn

from lightning_vitx.adapters import detect
from lightning_vitx.callbacks._held_out import MonitorConfigError

__all__ = ["find_model", "unwrap_compiled"]


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper holds (``_orig_mod``), else the module itself."""
    while isinstance(getattr(module, "_orig_mod", None), nn.Module):
        module = module._orig_mod  # type: ignore[assignment]
    return module


def find_model(pl_module: LightningModule, model_attribute: str | None) -> nn.Module:
    """The timm model at the dotted path ``model_attribute``, or the unique supported model in ``pl_module``.

    A model wrapped by ``torch.compile`` is returned as its original module (explanations hook into its blocks).
    Raises :class:`MonitorConfigError` naming the fix when there is none, or several.
    """
    if model_attribute is not None:
        try:
            model = unwrap_compiled(pl_module.get_submodule(model_attribute))
        except AttributeError:
            children = [name for name, _ in pl_module.named_modules() if name and name.count(".") < 2]
            raise MonitorConfigError(
                f"model_attribute={model_attribute!r}: the LightningModule has no such submodule; "
                f"its submodules include {children[:12]}"
            ) from None
        try:
            detect(model)
        except (TypeError, ValueError) as error:
            raise MonitorConfigError(f"model_attribute={model_attribute!r}: {error}") from None
        return model
    found: list[tuple[str, nn.Module]] = []
    for name, module in pl_module.named_modules():
        if not name or any(name.startswith(f"{outer}.") for outer, _ in found):
            continue  # the LightningModule itself, or inside a model already found
        candidate = unwrap_compiled(module)
        try:
            detect(candidate)
        except (TypeError, ValueError):
            continue
        if not any(candidate is model for _, model in found):
            found.append((name, candidate))
    if len(found) != 1:
        names = [name for name, _ in found]
        raise MonitorConfigError(
            f"ExplainabilityMonitor needs exactly one timm vision transformer in the LightningModule, found "
            f"{names or 'none'}; name it with ExplainabilityMonitor(model_attribute='path.to.model')"
        )
    return found[0][1]
