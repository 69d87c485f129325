"""Which LRP rule goes on which timm module, per engine and family: the rule maps, and the one support check.

A ``Composite`` (zennit's word) maps module types to ``Entry`` values: the rule, what the module must satisfy for the
rule to hold, and the children the rule handles itself. A model is supported when every module it has is covered:
its exact type has an entry whose requirement it meets, or a parent's entry claims it. ``Composite.check`` is the
only support check of the LRP family; its error names the module without a rule and an explainer that works on the
model. Families are small maps; an engine's composite joins its families (``explicit``: the gradient-free pass of
``relevance``; ``modified_backward``: AttnLRP's hooked backward). Adding a timm family is an adapter and one map.

Example::

    >>> import timm
    >>> from lightning_vitx.explainers.lrp.composites import explicit
    >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    >>> composite = explicit("chefer")
    >>> composite.check(model, "transformer_attribution")
    >>> composite.rule(model.blocks[0].mlp.fc1)
    LinearRule(joint=True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from lightning_vitx._checks import check_choice
from lightning_vitx.explainers.lrp.modified_backward import (
    GRADIENT,
    AttentionRule,
    AttentionRuleName,
    GammaRule,
    IdentityRule,
    LayerNormRule,
)
from lightning_vitx.explainers.lrp.rules import (
    EndsRule,
    Head,
    LinearRule,
    PassRule,
    ProductRule,
    ResidualRule,
    ZBoxRule,
)

__all__ = ["Composite", "Entry", "RuleMap", "explicit", "modified_backward"]

Requirement = Callable[[Any], str | None]  # why the rule does not hold for this module, or None


@dataclass(frozen=True)
class Entry:
    """One module type's rule in a composite.

    Args:
        rule: the rule object (``rules`` for the explicit engine, ``modified_backward`` for the hooked backward).
        requires: returns why the rule does not hold for a given module of the type (``None``: it holds).
        claims: children (dotted attribute paths) the rule handles itself; they need no entry of their own.
    """

    rule: Any
    requires: Requirement | None = None
    claims: tuple[str, ...] = ()


RuleMap = Mapping[type, Entry]
PASS = Entry(PassRule())
ALTERNATIVES = ("attnlrp", "generic_attention", "rollout")  # suggested, in order, when a composite refuses a model


@dataclass(frozen=True)
class Composite:
    """The rules of one engine and rule set: module type -> ``Entry``, looked up by exact type.

    Args:
        name: the rule set's name, e.g. ``"chefer"``.
        entries: the joined family maps.
    """

    name: str
    entries: RuleMap

    def rule(self, module: nn.Module) -> Any:
        """The rule for ``module`` (a ``TypeError`` naming its type when the composite has none)."""
        entry = self.entries.get(type(module))
        if entry is None:
            raise TypeError(f"the {self.name!r} LRP rules have no rule for a {_type_name(module)}")
        return entry.rule

    def claimed(self, model: nn.Module) -> set[int]:
        """The ids of the modules a parent's entry handles (its ``claims``, with what is inside them)."""
        return {
            id(inner)
            for module in model.modules()
            if (entry := self.entries.get(type(module))) is not None
            for path in entry.claims
            if _has_submodule(module, path)
            for inner in module.get_submodule(path).modules()
        }

    def refusal(self, model: nn.Module) -> str | None:
        """Why the rules do not cover ``model`` (the first module without a rule), or ``None``."""
        claimed = self.claimed(model)
        for path, module in model.named_modules():
            if id(module) in claimed:
                continue
            where = f"'{path}'" if path else "the model"
            entry = self.entries.get(type(module))
            if entry is None:
                return f"{where} is a {_type_name(module)}, which has no rule"
            reason = entry.requires(module) if entry.requires is not None else None
            if reason is not None:
                return f"{where} ({type(module).__name__}): {reason}"
        return None

    def check(self, model: nn.Module, explainer: str) -> None:
        """Raise a ``TypeError`` when the rules do not cover ``model``, naming the module and what works instead."""
        reason = self.refusal(model)
        if reason is None:
            return
        alternative = working_alternative(model, exclude=explainer)
        advice = f"use {alternative!r} for this model" if alternative else "no LRP-free explainer accepts it either"
        raise TypeError(f"{explainer} ({self.name} rules) does not cover this model: {reason}; {advice}")


def _type_name(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def working_alternative(model: nn.Module, exclude: str) -> str | None:
    """The first of ``ALTERNATIVES`` (but ``exclude``) whose explainer accepts ``model``, or ``None``."""
    from lightning_vitx.explainers import create

    for name in ALTERNATIVES:
        if name == exclude:
            continue
        try:
            create(name, model)
        except (TypeError, ValueError):
            continue
        return name
    return None


# --- requirements ------------------------------------------------------------------------------------------------


def _linear_classifier(model: Any) -> str | None:
    heads = [model.head] + ([model.head_dist] if getattr(model, "head_dist", None) is not None else [])
    if isinstance(getattr(model.head, "fc", None), nn.Module):  # Swin's ClassifierHead
        heads = [model.head.fc]
    for head in heads:
        if not isinstance(head, nn.Linear):
            return f"needs a Linear classifier head, got {type(head).__name__}; create it with num_classes > 0"
    return None


def _vit_readout(model: Any) -> str | None:
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg"):
        return f"global_pool={model.global_pool!r} has no rule (supported: 'token', 'avg')"
    if model.global_pool == "avg" and getattr(model, "pool_include_prefix", False):
        return "an avg-pool head that averages the prefix tokens has no rule: create it with pool_include_prefix=False"
    if model.global_pool == "avg" and getattr(model, "head_dist", None) is not None:
        return "an avg-pool head beside a distillation head has no rule: create it with global_pool='token'"
    return _linear_classifier(model)


def _swin_readout(model: Any) -> str | None:
    if getattr(model, "absolute_pos_embed", None) is not None:
        return "Swin's absolute position embedding has no rule"
    if not isinstance(model.layers[0].downsample, nn.Identity):
        return "a patch merging before the first stage has no rule"
    if getattr(model.head.global_pool, "pool_type", "avg") != "avg":
        return f"the head's {model.head.global_pool.pool_type!r} pooling has no rule (supported: 'avg')"
    return _linear_classifier(model)


def _ungated(attention: Any) -> str | None:
    return "gated attention has no rule" if getattr(attention, "gate", None) is not None else None


# --- the families ------------------------------------------------------------------------------------------------


def shared_map(linear: Entry, norm: Entry, passing: Entry) -> dict[type, Entry]:
    """Modules every family has: Linear layers, norms, dropout, identities, containers, the patch embedding."""
    from timm.layers import DropPath, LayerNorm, LayerScale, PatchDropout, PatchEmbed

    return {
        nn.Linear: linear,
        nn.LayerNorm: norm,
        LayerNorm: norm,
        nn.Dropout: passing,
        nn.Identity: passing,
        DropPath: passing,
        PatchDropout: passing,  # the identity in eval mode
        LayerScale: passing,
        nn.Sequential: passing,
        PatchEmbed: passing,
    }


def vit_map(readout: Entry, distilled: Entry, block: Entry, attention: Entry) -> dict[type, Entry]:
    """Timm's ``VisionTransformer``: ViT, DeiT (distilled too), register tokens, class-token or avg-pool heads."""
    from timm.layers import Attention
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, VisionTransformer

    return {VisionTransformer: readout, VisionTransformerDistilled: distilled, Block: block, Attention: attention}


def swin_map(readout: Entry, block: Entry, attention: Entry, passing: Entry, pooling: Entry) -> dict[type, Entry]:
    """Timm's ``SwinTransformer`` (v1): windowed attention, shifted windows, patch merging, an avg-pool head."""
    from timm.layers import ClassifierHead, SelectAdaptivePool2d
    from timm.models.swin_transformer import (
        PatchMerging,
        SwinTransformer,
        SwinTransformerBlock,
        SwinTransformerStage,
        WindowAttention,
    )

    return {
        SwinTransformer: readout,
        SwinTransformerStage: passing,
        SwinTransformerBlock: block,
        WindowAttention: attention,
        PatchMerging: passing,
        ClassifierHead: passing,
        nn.Softmax: passing,  # inside WindowAttention: the attention rule reads the probabilities
        SelectAdaptivePool2d: pooling,
    }


RuleSet = Literal["chefer", "baseline"]


@functools.cache
def explicit(rule_set: RuleSet) -> Composite:
    """The gradient-free pass's rules: ``"chefer"`` (the method's, ``layers_ours``) or ``"baseline"`` (``layers_lrp``).

    The two differ in the Linear rule (one denominator for both sign terms, or one per term) and the residual rule
    (renormalised per sample, or plain LRP-0); everything else is shared.
    """
    from timm.layers import Mlp

    check_choice("rule_set", rule_set, RuleSet)
    method = rule_set == "chefer"
    residual = ResidualRule(renormalise=method)
    entries = {
        **shared_map(Entry(LinearRule(joint=method)), PASS, PASS),
        Mlp: Entry(PassRule(), claims=("act",)),  # the MLP's activation passes relevance, whatever it is
        nn.Conv2d: Entry(ZBoxRule()),  # read by the pixel maps only, which check ``ZBoxRule.refuses``
        **vit_map(
            readout=Entry(EndsRule(position=residual), requires=_vit_readout),
            distilled=Entry(EndsRule(average=residual, position=residual), requires=_vit_readout),
            block=Entry(residual),
            attention=Entry(ProductRule(), requires=_ungated),
        ),
        **swin_map(
            readout=Entry(EndsRule(), requires=_swin_readout),
            block=Entry(residual),
            attention=Entry(ProductRule()),
            passing=PASS,
            pooling=Entry(PassRule(), claims=("pool", "flatten")),  # EndsRule.mean, once the readout checked it
        ),
    }
    return Composite(rule_set, entries)


@functools.cache
def modified_backward(attention_rule: AttentionRuleName, gamma: float, conv_gamma: float) -> Composite:
    """AttnLRP's (``"attnlrp"``) or CP-LRP's (``"cp"``) rules as hooks on the backward (``modified_backward``)."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import ResPostBlock

    gradient = Entry(GRADIENT)
    check_choice("attention_rule", attention_rule, AttentionRuleName)
    attention = Entry(AttentionRule(attention_rule, gamma), requires=_ungated, claims=("qkv", "proj"))
    entries = {
        **shared_map(Entry(GammaRule(gamma)), Entry(LayerNormRule()), gradient),
        nn.Conv2d: Entry(GammaRule(conv_gamma), requires=GammaRule(conv_gamma).refuses),
        # any head made of modules with rules: a Linear classifier, or none (a headless model with a callable target)
        **vit_map(readout=gradient, distilled=gradient, block=gradient, attention=attention),
        **swin_map(
            readout=gradient,
            block=gradient,
            attention=attention,
            passing=gradient,
            pooling=Entry(GRADIENT, claims=("pool", "flatten")),  # the gradient of any pooling is its LRP-0
        ),
        Mlp: Entry(IdentityRule(), claims=("act",)),  # the identity rule through the MLP's activation
        ResPostBlock: gradient,  # post-norm ViT blocks: the same operations in another order, each with its rule
    }
    return Composite(attention_rule, entries)


def classifier_heads(model: Any) -> list[Head]:
    """The classifier heads and the token rows they read (``None``: the mean of the patch tokens)."""
    if isinstance(getattr(model.head, "fc", None), nn.Linear):  # Swin
        return [(model.head.fc, None)]
    if model.global_pool == "avg":
        return [(model.head, None)]
    heads: list[Head] = [(model.head, 0)]
    if getattr(model, "head_dist", None) is not None:
        heads.append((model.head_dist, 1))  # distilled DeiT: logits = (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    return heads
