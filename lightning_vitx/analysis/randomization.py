"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation that describes the model must change when the model's learned weights are replaced by random ones.
:func:`randomization_check` re-draws the classifier head, then the blocks from the top down (cumulatively, or one
stage at a time), on a copy of the model, and reports how closely each explainer's maps on the randomised copy
still follow its maps on the trained model (mean per-image Spearman rank correlation). Near 1 after the blocks
are gone: the map does not depend on what was learned. The floor is the correlation between the maps of two
independently randomised models: what "no relation to these weights" looks like for that explainer (a map that
follows the image, such as a patch-norm readout, keeps a high floor).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vitx.adapters import detect
from lightning_vitx.analysis.ranks import rank_correlation

__all__ = ["RandomizationResult", "randomization_check"]

ExplainerFactory = Callable[[nn.Module], Callable[..., Tensor]]


@dataclass(frozen=True)
class RandomizationResult:
    """What :func:`randomization_check` measured.

    Attributes:
        stages: what was re-drawn at each step, top down: ``"head"``, then ``"block 11"`` ... ``"block 0"``
            (cumulative: each stage keeps the ones before it re-drawn, unless ``cascade=False``).
        correlations: explainer -> mean per-image Spearman between the trained model's maps and the randomised
            model's maps, one value per stage (images whose map is constant on either side are left out).
        floor: explainer -> mean per-image Spearman between the maps of two models re-drawn whole (embeddings,
            tokens and norms too), on the same images.
        cascade: whether the stages were cumulative.
    """

    stages: list[str]
    correlations: dict[str, list[float]]
    floor: dict[str, float]
    cascade: bool

    def table(self) -> str:
        """A markdown table: one row per explainer, one column per stage, then the floor."""
        header = "| explainer | " + " | ".join(self.stages) + " | floor |"
        rows = [header, "|---" * (len(self.stages) + 2) + "|"]
        for name, values in self.correlations.items():
            cells = " | ".join(f"{value:.2f}" for value in values)
            rows.append(f"| `{name}` | {cells} | {self.floor[name]:.2f} |")
        return "\n".join(rows)

    def figure(self) -> Any:
        """A matplotlib figure: each explainer's correlation against the stages, its floor dashed."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(1.2 + 0.55 * len(self.stages), 3.6), constrained_layout=True)
        colours = plt.get_cmap("tab20")
        for index, (name, values) in enumerate(self.correlations.items()):
            colour = colours(index % 20)
            axis.plot(range(len(values)), values, marker="o", color=colour, label=name)
            axis.axhline(self.floor[name], color=colour, linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(self.stages)), self.stages, rotation=45, ha="right")
        axis.set_ylabel("Spearman with the trained model's maps")
        axis.set_ylim(-0.2, 1.05)
        axis.set_title("cascading randomisation" if self.cascade else "independent randomisation")
        axis.legend(fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
        return figure


def _factories(explainers: Sequence[str] | Mapping[str, ExplainerFactory]) -> dict[str, ExplainerFactory]:
    import lightning_vitx.explainers as X

    if isinstance(explainers, Mapping):
        for name, factory in explainers.items():
            if not callable(factory):
                raise TypeError(f"explainers[{name!r}] must be a callable model -> explainer, got {factory!r}")
        return dict(explainers)
    if isinstance(explainers, str) or not explainers:
        raise TypeError(f"explainers must be a non-empty list of registry names or a mapping, got {explainers!r}")
    for name in explainers:
        X.get_info(name)  # unknown names fail here, with the choices

    def registered(name: str) -> ExplainerFactory:
        return lambda model: X.create(name, model)

    return {name: registered(name) for name in explainers}


def _stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """``(label, modules)`` top down: the classifier head(s), then each block from the last to the first."""
    get_classifier = getattr(model, "get_classifier", None)
    heads = get_classifier() if callable(get_classifier) else None
    heads = heads if isinstance(heads, tuple) else (heads,)
    head_modules = [head for head in heads if isinstance(head, nn.Module) and any(True for _ in head.parameters())]
    if not head_modules:
        raise TypeError(f"expected a classifier with weights (model.get_classifier()), got {heads!r}")
    blocks = detect(model).blocks()
    return [("head", head_modules)] + [(f"block {i}", [blocks[i]]) for i in reversed(range(len(blocks)))]


def _redraw(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-draw the weights of ``modules`` with timm's ViT/Swin initialisation, seeded, leaving the global RNG alone."""
    from timm.models import named_apply
    from timm.models.vision_transformer import init_weights_vit_timm

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            named_apply(init_weights_vit_timm, module, include_root=True)


def _redraw_all(model: nn.Module, seed: int) -> None:
    """The whole model re-drawn, embeddings and tokens included (timm's ``init_weights`` where the model has it)."""
    init_weights = getattr(model, "init_weights", None)
    if not callable(init_weights):
        _redraw([model], seed)
        return
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        init_weights()


def _mean_correlation(a: Tensor, b: Tensor) -> float:
    values = rank_correlation(a.flatten(1).double(), b.flatten(1).double())
    values = values[torch.isfinite(values)]  # a constant map has no ranking
    return float(values.mean()) if values.numel() else float("nan")


def randomization_check(
    model: nn.Module,
    images: Tensor,
    explainers: Sequence[str] | Mapping[str, ExplainerFactory],
    target: int | Tensor | None = None,
    cascade: bool = True,
    seed: int = 0,
) -> RandomizationResult:
    """Re-draw the model's weights stage by stage and measure how far each explainer's maps follow.

    Works on deep copies: ``model`` is left as found. The stages are the classifier head, then the blocks from
    the top; ``cascade=True`` keeps earlier stages re-drawn (Adebayo et al.'s cascading test), ``False``
    re-draws one stage at a time on a fresh copy. Weights are re-drawn with timm's own ViT/Swin initialisation
    (``init_weights_vit_timm``: truncated normal Linear weights, zero biases, ``reset_parameters``/``init_weights``
    of norms, layer scales and position tables), seeded by ``seed``. Every model explains the same class: the
    trained model's prediction, or ``target``.

    Args:
        model: a timm ViT/DeiT/Swin classifier.
        images: ``[B, 3, H, W]`` as the model takes them.
        explainers: registry names, or ``{name: factory}`` with ``factory(model) -> explainer`` for options or
            explainers of your own (an explainer is called as ``explainer(images, target) -> [B, gh, gw]``).
        target: the class to explain (int or ``[B]``); None explains the trained model's prediction.
        cascade: cumulative (True) or independent (False) stages.
        seed: seed of the re-drawn weights (the floor's two models use ``seed + 1`` and ``seed + 2``).

    Example::

        >>> import timm, torch
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
        ...                           patch_size=8, depth=2).eval()
        >>> result = randomization_check(model, torch.randn(4, 3, 32, 32), ["rollout", "gradcam"])
        >>> result.stages
        ['head', 'block 1', 'block 0']
        >>> sorted(result.correlations), len(result.correlations["rollout"])
        (['gradcam', 'rollout'], 3)
        >>> result.correlations["rollout"][0]  # rollout does not read the head
        1.0
    """
    factories = _factories(explainers)
    original = copy.deepcopy(model).eval()
    with torch.no_grad():
        predicted = original(images).argmax(dim=1)
    if target is None:
        target = predicted
    elif isinstance(target, int):
        target = torch.full_like(predicted, target)
    stages = _stages(original)

    def explain(net: nn.Module) -> dict[str, Tensor]:
        return {name: factory(net)(images, target).detach().float().cpu() for name, factory in factories.items()}

    reference = explain(original)
    correlations: dict[str, list[float]] = {name: [] for name in factories}
    randomised = copy.deepcopy(original)
    for index, (_, modules) in enumerate(stages):
        if not cascade:
            randomised = copy.deepcopy(original)
        names = {id(m): n for n, m in original.named_modules()}
        copies = dict(randomised.named_modules())
        _redraw([copies[names[id(m)]] for m in modules], seed + 1000 * index)
        for name, maps in explain(randomised).items():
            correlations[name].append(_mean_correlation(reference[name], maps))

    floors = []
    for offset in (1, 2):
        net = copy.deepcopy(original)
        _redraw_all(net, seed + offset)
        floors.append(explain(net))
    floor = {name: _mean_correlation(floors[0][name], floors[1][name]) for name in factories}
    return RandomizationResult([label for label, _ in stages], correlations, floor, cascade)
