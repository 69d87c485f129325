"""The explaining forward: the one way explainers and analyses run the model (as captum's ``_run_forward`` is).

``explaining_forward(adapter, images, target)`` checks the inputs and the target, puts the model in the state
explaining needs (:func:`explaining`: eval mode, timm's fused attention off, float32 weights; all restored on
exit), leaves inference mode, turns autocast off and yields an :class:`ExplainingCall` whose ``forward()`` runs the
model on a detached copy of the images and resolves the predicted class. The capture pass, the LRP family's passes,
AttnLRP's modified backward and the edge ablation all run through it; the metrics check targets with
:func:`check_target`.

A target is ``None`` (the predicted class), a class (``int`` or ``LongTensor[B]``), or a callable
``f(outputs) -> Tensor[B]`` that computes the scalar to explain per sample from the model's outputs (a regression
output, a sum of classes, the similarity of a headless model's features to a reference). A pass that differentiates
``call.score(outputs)`` takes callables (``explaining_forward(..., callable_target=True)``); one that seeds a class
(the LRP family's one-hot relevance) refuses them with a ``TypeError`` before the forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import torch
from torch import Tensor

from lightning_vitx._state import eval_mode
from lightning_vitx.adapters.base import Adapter

__all__ = [
    "LOW_PRECISION",
    "ExplainingCall",
    "Target",
    "TargetFn",
    "check_inputs",
    "check_target",
    "explaining",
    "explaining_forward",
    "is_target_fn",
    "resolve_target",
]

TargetFn = Callable[[Tensor], Tensor]
Target = int | Tensor | TargetFn | None


def is_target_fn(target: object) -> TypeGuard[TargetFn]:
    """Whether ``target`` is a callable target ``f(outputs) -> Tensor[B]`` (not a class, not ``None``)."""
    return callable(target) and not isinstance(target, (Tensor, int))


def check_target(
    target: Target, batch_size: int, num_classes: int | None, who: str = "", allow_callable: bool = False
) -> None:
    """Raise ``TypeError``/``ValueError`` for a target that is not a valid class choice for ``batch_size`` images.

    Valid: ``None``, an int, or an integer tensor ``[B]`` (or 0-d) of classes in ``[0, num_classes)`` (any class
    >= 0 when ``num_classes`` is None); with ``allow_callable``, also a callable ``f(outputs) -> Tensor[B]`` (its
    value is checked when it is called, :meth:`ExplainingCall.score`). ``who`` prefixes the message.
    """
    prefix = f"{who}: " if who else ""
    expected = f"expected target as None (the predicted class), an int or an integer tensor of shape [{batch_size}]"
    if target is None:
        return
    if is_target_fn(target):
        if allow_callable:
            return
        raise TypeError(
            f"{prefix}{expected}, got a callable ({getattr(target, '__name__', type(target).__name__)}): this pass "
            "explains a class (its relevance starts from the class's one-hot or logit). Pass the class, or use an "
            "explainer that takes callable targets (lightning_vitx.explainers.get_info(name).callable_target)"
        )
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
    """Check a class ``target`` and return it as ``LongTensor[B]`` on ``device`` (``None`` stays: the predicted class).

    A callable raises the ``TypeError`` of :func:`check_target`: it has no classes to resolve.
    """
    check_target(target, batch_size, num_classes)
    if isinstance(target, Tensor):
        return target.detach().to(device=device, dtype=torch.long).expand(batch_size).clone()
    if isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long, device=device)
    return None  # None: the predicted class (a callable has raised above)


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
    ``forward()`` fills in the predicted class; ``target_fn`` is the callable target (then ``target`` stays
    ``None``).
    """

    adapter: Adapter
    inputs: Tensor
    target: Tensor | None
    target_fn: TargetFn | None = None

    def forward(self) -> Tensor:
        """The model's logits on ``inputs`` (run inside whatever hooks or rule contexts the caller opened)."""
        model: Any = self.adapter.model
        logits: Tensor = model(self.inputs)
        if self.target is None and self.target_fn is None:
            self.target = logits.detach().argmax(dim=1)
        return logits

    @property
    def target_ids(self) -> Tensor:
        """The target classes; only after ``forward()`` when the predicted class was asked for."""
        if self.target_fn is not None:
            raise TypeError("a callable target has no class indices; differentiate call.score(outputs) instead")
        if self.target is None:
            raise RuntimeError("the predicted class is known after forward(); call it first")
        return self.target

    def score(self, outputs: Tensor, objective: Literal["logit", "probability"] = "logit") -> Tensor:
        """``[B]``: the scalar explained per sample, float32: ``outputs[b, target[b]]`` or ``target_fn(outputs)``.

        ``outputs`` are the model's (or, for a per-block score, its head's on that block's tokens). With
        ``objective="probability"`` the class's softmax probability; a callable target is its own scalar and
        refuses it.
        """
        if self.target_fn is None:
            scores = outputs.float().softmax(dim=1) if objective == "probability" else outputs.float()
            return scores.gather(1, self.target_ids[:, None])[:, 0]
        if objective != "logit":
            raise ValueError(
                f"a callable target is the scalar to explain itself; it has no softmax {objective}: explain it with "
                "the logit objective (e.g. tokentm(score='logit')) or pass a class as the target"
            )
        batch = self.inputs.shape[0]
        value = self.target_fn(outputs.float())
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape != (batch,):
            found = f"a {value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else value
            raise ValueError(
                f"expected target(outputs) to return a float tensor of shape [{batch}] (the scalar to explain per "
                f"sample, e.g. lambda out: out[:, 0]), got {found}"
            )
        if torch.is_grad_enabled() and not value.requires_grad:
            raise ValueError(
                "target(outputs) does not depend on the outputs (it carries no gradient); compute it from them"
            )
        return value.float()


@contextlib.contextmanager
def explaining_forward(
    adapter: Adapter,
    images: Tensor,
    target: Target = None,
    gradients: bool = False,
    input_grad: bool = False,
    callable_target: bool = False,
) -> Iterator[ExplainingCall]:
    """Check ``images`` and ``target``, enter the explaining state, and yield the call (module docstring).

    ``gradients``: autograd on inside (off otherwise). ``input_grad``: the inputs require grad, so gradients reach
    the model's activations even when its parameters are frozen. ``callable_target``: the caller differentiates
    ``call.score(outputs)``, so a callable target is taken; otherwise it raises a ``TypeError`` here.

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
        if is_target_fn(target):
            check_target(target, images.shape[0], adapter.num_classes, allow_callable=callable_target)
            target_ids, target_fn = None, target
        else:
            target_ids, target_fn = resolve_target(target, images.shape[0], adapter.num_classes, images.device), None
        inputs = images.detach().clone().to(dtype)
        if input_grad:
            inputs.requires_grad_(True)
        yield ExplainingCall(adapter, inputs, target_ids, target_fn)
