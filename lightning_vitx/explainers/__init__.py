"""Explainers: one method per module, a registry, and several methods from one capture pass.

Example::

    >>> import timm, torch
    >>> import lightning_vitx.explainers as X
    >>> for name in X.available():
    ...     print(name)
    attnlrp
    generic_attention
    gmar
    gradcam
    layernorm_stats
    legrad
    lrp
    partial_lrp
    patch_interaction
    raw_attention
    rollout
    tokentm
    transformer_attribution
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    >>> X.create("generic_attention", model)(torch.randn(2, 3, 224, 224), target=1).shape
    torch.Size([2, 14, 14])
"""

from lightning_vitx.explainers._registry import ExplainerInfo, available, create, get_class, get_info, register
from lightning_vitx.explainers.base import Explainer, ExplainerGroup, ReadoutExplainer, create_many
from lightning_vitx.explainers.generic_attention import GenericAttention
from lightning_vitx.explainers.gmar import GMAR
from lightning_vitx.explainers.gradcam import AttentionGradCAM
from lightning_vitx.explainers.layernorm_stats import LayerNormStats
from lightning_vitx.explainers.legrad import LeGrad
from lightning_vitx.explainers.lrp import LRP
from lightning_vitx.explainers.lrp.attnlrp import AttnLRP
from lightning_vitx.explainers.lrp.partial import PartialLRP
from lightning_vitx.explainers.lrp.transformer_attribution import TransformerAttribution
from lightning_vitx.explainers.patch_interaction import PatchInteraction
from lightning_vitx.explainers.raw_attention import RawAttention
from lightning_vitx.explainers.rollout import AttentionRollout
from lightning_vitx.explainers.tokentm import TokenTM

__all__ = [
    "GMAR",
    "LRP",
    "AttentionGradCAM",
    "AttentionRollout",
    "AttnLRP",
    "Explainer",
    "ExplainerGroup",
    "ExplainerInfo",
    "GenericAttention",
    "LayerNormStats",
    "LeGrad",
    "PartialLRP",
    "PatchInteraction",
    "RawAttention",
    "ReadoutExplainer",
    "TokenTM",
    "TransformerAttribution",
    "available",
    "create",
    "create_many",
    "get_class",
    "get_info",
    "register",
]
