"""Many perturbation curves in one stream of forwards, their clean and fully perturbed ends shared (the monitor's way).

A perturbation metric used alone evaluates every point of its curves itself
(:func:`~lightning_vitx.metrics.functional.perturbation_curves`). The monitor scores several explainers' maps, and a
random order, with the same metrics on the same images: the ends of every curve (no patch perturbed: the image or
the baseline as they are; every patch perturbed: the other one) do not depend on the map. So it plans each metric's
batch as a :class:`CurveJob`, evaluates the clean images once (its own clean forward) and each baseline once, and
sends the interior points of every job through the model in one stream of ``max_batch`` images per forward
(:func:`stream_logits`); :meth:`CurveJob.curves` assembles the same curves the metric would compute alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_vitx._state import eval_mode
from lightning_vitx.metrics._common import CheckedBatch, PatchGeometry
from lightning_vitx.metrics.functional.perturbation import (
    Baseline,
    Score,
    _perturb,
    _prepare,
    _ranks,
)

__all__ = ["CurveJob", "Source", "curve_job", "stream_logits"]

Source = tuple[int, Callable[[Tensor], Tensor]]  # (images, build: local indices [n] -> images [n, C, H, W])


@dataclass
class CurveJob:
    """One metric's curves for the usable samples of one batch, as the perturbed images they need.

    ``counts [S]``: patches perturbed at each step; a step with none (``0``) is the unperturbed image the curve
    starts from (the image when deleting, the baseline when inserting), one with all of them (``P``) the other one.
    """

    images: Tensor  # [n, C, H, W]
    substrate: Tensor  # [n, C, H, W]: what perturbed patches become
    ranks: Tensor  # [n, P]: each patch's place in the order
    counts: Tensor  # [S]
    geometry: PatchGeometry
    target: Tensor  # [n]
    score: Score
    insert: bool

    @property
    def interior(self) -> Tensor:
        """The steps ``[k]`` that perturb some patches but not all: the images only this job's order gives."""
        return ((self.counts > 0) & (self.counts < self.ranks.shape[1])).nonzero()[:, 0]

    @property
    def needs_substrate(self) -> bool:
        """Whether a curve end is the baseline image (deletion's last step, insertion's first)."""
        end = self.ranks.shape[1] if not self.insert else 0
        return bool((self.counts == end).any())

    def source(self) -> Source:
        """The interior points of every sample, sample-major: ``(n * k, build)``."""
        steps = self.interior
        k = steps.numel()

        def build(index: Tensor) -> Tensor:
            index = index.to(steps.device)
            sample, step = index // k, steps[index % k]
            return _perturb(
                self.images, self.substrate, self.ranks, self.counts, self.geometry, self.insert, sample, step
            )

        return self.images.shape[0] * k, build

    def curves(self, interior: Tensor, clean: Tensor, substrate: Tensor | None) -> Tensor:
        """The curves ``[n, S]`` from logits: of the interior points, of the clean images, of the baselines.

        ``interior [n * k, classes]`` in ``source``'s order; ``clean`` and ``substrate`` ``[n, classes]``, the
        latter needed when ``needs_substrate``.
        """
        steps = self.interior
        n, num_patches = self.ranks.shape
        scores = torch.empty(n, self.counts.numel(), device=self.images.device)
        if steps.numel():
            target = self.target.repeat_interleave(steps.numel())
            scores[:, steps] = self.score(interior, target).view(n, -1).to(scores)
        ends = {0: substrate if self.insert else clean, num_patches: clean if self.insert else substrate}
        for count, logits in ends.items():
            at = (self.counts == count).nonzero()[:, 0]
            if at.numel():
                if logits is None:
                    raise ValueError("the curve ends at the baseline image: pass its logits")
                scores[:, at] = self.score(logits, self.target).to(scores)[:, None]
        return scores


def curve_job(
    model: nn.Module,
    batch: CheckedBatch,
    fractions: Tensor,
    baseline: Baseline,
    insert: bool,
    most_relevant_first: bool,
    score: Score,
    substrate: Tensor | None = None,
) -> CurveJob:
    """The job of a checked batch's usable samples; ``substrate [n, ...]``: their baseline images, if made already."""
    images, target, order, substrate = _prepare(model, batch, baseline, most_relevant_first, substrate)
    counts = (fractions.to(images.device) * order.shape[1]).round().long()
    return CurveJob(images, substrate, _ranks(order), counts, batch.geometry, target, score, insert)


def stream_logits(model: nn.Module, sources: Sequence[Source], max_batch: int) -> list[Tensor]:
    """The model's outputs for every source's images, in order: one stream of ``max_batch`` images per forward.

    Images are built as each forward needs them (a forward may span several sources), with no gradients and the
    model in eval mode (its flags restored afterwards).
    """
    outputs: list[list[Tensor]] = [[] for _ in sources]
    pending: list[tuple[int, int, int]] = []  # (source, first local index, images)

    def flush() -> None:
        parts = [sources[j][1](torch.arange(first, first + n)) for j, first, n in pending]
        logits = model(torch.cat(parts))
        for (j, _, _), piece in zip(pending, logits.split([n for _, _, n in pending]), strict=True):
            outputs[j].append(piece)
        pending.clear()

    with eval_mode(model), torch.no_grad():
        filled = 0
        for j, (size, _) in enumerate(sources):
            taken = 0
            while taken < size:
                n = min(size - taken, max_batch - filled)
                pending.append((j, taken, n))
                taken, filled = taken + n, filled + n
                if filled == max_batch:
                    flush()
                    filled = 0
        if pending:
            flush()
    return [torch.cat(pieces) if pieces else torch.empty(0) for pieces in outputs]
