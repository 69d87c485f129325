"""The explaining forward: the one way explainers and analyses run the model (as captum's ``_run_forward`` is).

``explaining_forward(adapter, images, target)`` checks the inputs and the target, puts the model in the state
explaining needs (:func:`explaining`: eval mode, timm's fused attention off, float32 weights; all restored on
exit), leaves inference mode, turns autocast off and yields an :class:`ExplainingCall` whose ``forward()`` runs the
model on a detached copy of the images and resolves the predicted class. The capture pass, the LRP family's passes,
AttnLRP's modified backward and the edge ablation all run through it; the metrics check targets with
:func:`check_target`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_vitx._state import eval_mode
from lightning_vitx.adapters.base import Adapter

__all__ = [
    "LOW_PRECISION",
    "ExplainingCall",
    "Target",
    "check_inputs",
    "check_target",
    "explaining",
    "explaining_forward",
    "resolve_target",
]

Target = int | Tensor | None


def check_target(target: Target, batch_size: int, num_classes: int | None, who: str = "") -> None:
    """Raise ``TypeError``/``ValueError`` for a target that is not a valid class choice for ``batch_size`` images.

    Valid: ``None``, an int, or an integer tensor ``[B]`` (or 0-d) of classes in ``[0, num_classes)`` (any class
    >= 0 when ``num_classes`` is None). ``who`` prefixes the message.
    """
    prefix = f"{who}: " if who else ""
    expected = f"expected target as None (the predicted class), an int or an integer tensor of shape [{batch_size}]"
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"{prefix}{expected}, got {type(target).__name__}")
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"{prefix}{expected}, got a {target.dtype} tensor; convert it with target.long()")
        if target.ndim != 0 and target.shape != (batch_size,):
            raise ValueError(f"{prefix}{expected}, got shape {list(target.shape)}")
        if not target.numel():
            return
        low, high = torch.stack(torch.aminmax(target.detach().long())).tolist()  # one host sync for both bounds
    else:
        low = high = target
    if low < 0 or (num_classes is not None and high >= num_classes):
        classes = f"[0, {num_classes})" if num_classes is not None else "[0, number of classes)"
        raise ValueError(f"{prefix}target classes must lie in {classes} for this model, got min {low} and max {high}")


def resolve_target(target: Target, batch_size: int, num_classes: int, device: torch.device) -> Tensor | None:
    """Check ``target`` and return it as ``LongTensor[B]`` on ``device`` (``None`` stays: the predicted class)."""
    check_target(target, batch_size, num_classes)
    if target is None:
        return None
    if isinstance(target, Tensor):
        return target.detach().to(device=device, dtype=torch.long).expand(batch_size).clone()
    return torch.full((batch_size,), target, dtype=torch.long, device=device)


LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def explaining(adapter: Adapter) -> Iterator[None]:
    """Put the model in the state explaining needs; restore every flag on exit.

    Inside: every module in eval mode, timm fused attention off (so the probabilities exist), gradient
    checkpointing off on the model and its stages (it would re-run the forward hooks during backward), modules
    compiled in place (``model.compile()``) run eagerly, bf16 / fp16 weights and buffers in float32 (their values
    exactly; the copy costs their float32 size while explaining). Restored on exit: each module's train/eval
    flag, each ``fused_attn`` and ``grad_checkpointing`` value, each compiled call, each tensor's dtype.
    """
    attention: list[Any] = adapter.attention_modules()
    fused = [(module, module.fused_attn) for module in attention if hasattr(module, "fused_attn")]
    modules: list[Any] = list(adapter.model.modules())
    checkpointing = [(module, module.grad_checkpointing) for module in modules if hasattr(module, "grad_checkpointing")]
    # model.compile() in place: the compiled graph would skip the hooks the explainers read; run the eager modules
    compiled = [(module, module._compiled_call_impl) for module in modules if module._compiled_call_impl is not None]
    # bf16 / fp16 weights (precision="bf16-true"): explained in float32, as under autocast. The LRP rules divide
    # by sums that nearly cancel; in bf16 lrp's maps fell to a Pearson of -0.12 with float32's on the same weights.
    tensors = [*adapter.model.parameters(), *adapter.model.buffers()]
    low = [(tensor, tensor.dtype) for tensor in tensors if tensor.dtype in LOW_PRECISION]
    with eval_mode(adapter.model):
        try:
            with torch.no_grad():
                for tensor, _ in low:
                    tensor.data = tensor.data.float()  # exact: every bf16 / fp16 value is a float32 value
            for module, _ in fused:
                module.fused_attn = False
            for module, _ in checkpointing:
                module.grad_checkpointing = False
            for module, _ in compiled:
                module._compiled_call_impl = None
            yield
        finally:
            for module, flag in fused:
                module.fused_attn = flag
            for module, flag in checkpointing:
                module.grad_checkpointing = flag
            for module, call in compiled:
                module._compiled_call_impl = call
            with torch.no_grad():
                for tensor, dtype in low:
                    tensor.data = tensor.data.to(dtype)  # back to the very same values


def check_inputs(adapter: Adapter, images: Tensor) -> tuple[torch.dtype, torch.device]:
    """Raise a clear error for ``images`` the model can't take; return the dtype it is explained in and its device.

    bf16 / fp16 models are explained in float32 (:func:`explaining` upcasts them).
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"expected images as a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"expected floating-point images, got dtype {images.dtype}; convert with images.float()")
    if images.ndim == 4 and images.shape[0] == 0:
        raise ValueError(f"expected at least one image, got an empty batch {list(images.shape)}")
    adapter.check_images(images)
    param = next(adapter.model.parameters())
    if images.device != param.device:
        raise ValueError(
            f"images are on {images.device} but the model is on {param.device}; move them with .to({param.device})"
        )
    return (torch.float32 if param.dtype in LOW_PRECISION else param.dtype), param.device


@dataclass
class ExplainingCall:
    """One explaining forward's inputs and target; ``forward()`` runs the model on them.

    ``inputs`` is a detached copy of the images in the dtype the model is explained in (it requires grad when the
    call was opened with ``input_grad``); ``target`` is the checked ``LongTensor[B]``, or ``None`` until
    ``forward()`` fills in the predicted class.
    """

    adapter: Adapter
    inputs: Tensor
    target: Tensor | None

    def forward(self) -> Tensor:
        """The model's logits on ``inputs`` (run inside whatever hooks or rule contexts the caller opened)."""
        model: Any = self.adapter.model
        logits: Tensor = model(self.inputs)
        if self.target is None:
            self.target = logits.detach().argmax(dim=1)
        return logits

    @property
    def target_ids(self) -> Tensor:
        """The target classes; only after ``forward()`` when the predicted class was asked for."""
        if self.target is None:
            raise RuntimeError("the predicted class is known after forward(); call it first")
        return self.target


@contextlib.contextmanager
def explaining_forward(
    adapter: Adapter, images: Tensor, target: Target = None, gradients: bool = False, input_grad: bool = False
) -> Iterator[ExplainingCall]:
    """Check ``images`` and ``target``, enter the explaining state, and yield the call (module docstring).

    ``gradients``: autograd on inside (off otherwise). ``input_grad``: the inputs require grad, so gradients reach
    the model's activations even when its parameters are frozen.

    Example::

        >>> import timm, torch
        >>> from lightning_vitx.adapters import detect
        >>> adapter = detect(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5))
        >>> with explaining_forward(adapter, torch.randn(2, 3, 224, 224), target=None) as call:
        ...     logits = call.forward()
        >>> logits.shape, call.target_ids.shape
        (torch.Size([2, 5]), torch.Size([2]))
    """
    dtype, device = check_inputs(adapter, images)
    autocast_off = torch.autocast(device_type=device.type, enabled=False)
    with explaining(adapter), torch.inference_mode(False), torch.set_grad_enabled(gradients), autocast_off:
        target_ids = resolve_target(target, images.shape[0], adapter.num_classes, images.device)
        inputs = images.detach().clone().to(dtype)
        if input_grad:
            inputs.requires_grad_(True)
        yield ExplainingCall(adapter, inputs, target_ids)
