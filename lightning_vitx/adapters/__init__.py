"""Architecture adapters: token layout, attention modules, and the shared capture pass."""

from lightning_vitx.adapters.base import Adapter, TokenLayout, detect, register_adapter
from lightning_vitx.adapters.capture import Capture, CaptureNeeds, TokenStats, capture_pass, check_attention_recorded
from lightning_vitx.adapters.forward import (
    ExplainingCall,
    Target,
    check_inputs,
    check_target,
    explaining,
    explaining_forward,
    resolve_target,
)
from lightning_vitx.adapters.geometry import AttentionGeometry, DenseAttention, WindowedAttention
from lightning_vitx.adapters.normalization import model_mean_std
from lightning_vitx.adapters.swin import SwinTransformerAdapter
from lightning_vitx.adapters.vit import VisionTransformerAdapter

__all__ = [
    "Adapter",
    "AttentionGeometry",
    "Capture",
    "CaptureNeeds",
    "DenseAttention",
    "ExplainingCall",
    "SwinTransformerAdapter",
    "Target",
    "TokenLayout",
    "TokenStats",
    "VisionTransformerAdapter",
    "WindowedAttention",
    "capture_pass",
    "check_attention_recorded",
    "check_inputs",
    "check_target",
    "detect",
    "explaining",
    "explaining_forward",
    "model_mean_std",
    "register_adapter",
    "resolve_target",
]
