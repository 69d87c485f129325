"""Architecture adapters: token layout, attention modules, and the shared capture pass."""

from lightning_vitx.adapters.base import Adapter, TokenLayout, detect, qualified_name, register_adapter
from lightning_vitx.adapters.beit import BeitAdapter
from lightning_vitx.adapters.cait import CaitAdapter
from lightning_vitx.adapters.capture import (
    Capture,
    CaptureNeeds,
    TokenStats,
    capture_pass,
    check_attention_recorded,
    check_capture_supported,
)
from lightning_vitx.adapters.eva import EvaAdapter
from lightning_vitx.adapters.forward import (
    ExplainingCall,
    Target,
    TargetFn,
    check_inputs,
    check_target,
    explaining,
    explaining_forward,
    is_target_fn,
    resolve_target,
)
from lightning_vitx.adapters.geometry import AttentionGeometry, DenseAttention, WindowedAttention
from lightning_vitx.adapters.normalization import model_mean_std
from lightning_vitx.adapters.swin import SwinTransformerAdapter
from lightning_vitx.adapters.swinv2 import SwinTransformerV2Adapter
from lightning_vitx.adapters.vit import VisionTransformerAdapter
from lightning_vitx.adapters.vit_map import AttentionPoolViTAdapter
from lightning_vitx.adapters.vit_relpos import RelPosViTAdapter

__all__ = [
    "Adapter",
    "AttentionGeometry",
    "AttentionPoolViTAdapter",
    "BeitAdapter",
    "CaitAdapter",
    "Capture",
    "CaptureNeeds",
    "DenseAttention",
    "EvaAdapter",
    "ExplainingCall",
    "RelPosViTAdapter",
    "SwinTransformerAdapter",
    "SwinTransformerV2Adapter",
    "Target",
    "TargetFn",
    "TokenLayout",
    "TokenStats",
    "VisionTransformerAdapter",
    "WindowedAttention",
    "capture_pass",
    "check_attention_recorded",
    "check_capture_supported",
    "check_inputs",
    "check_target",
    "detect",
    "explaining",
    "explaining_forward",
    "is_target_fn",
    "model_mean_std",
    "qualified_name",
    "register_adapter",
    "resolve_target",
]
