"""The LRP family: four explainers on two engines, their rules, and composites that say which rule goes where.

- ``rules.py``: the explicit engine's rules (Chefer et al.'s), one small class per operation, parameters as fields.
- ``modified_backward.py``: the modified backward's rules (AttnLRP / CP-LRP), each installing hooks on a module.
- ``composites.py``: per engine and rule set, timm module type -> rule; also the one support check (a model is
  covered when every module has a rule).
- The explicit engine (``lrp``, ``partial_lrp``, ``transformer_attribution``): ``relevance.py`` records a hooked
  forward and carries the relevance down the blocks, no gradients; ``passes.py`` reads it at the blocks, the patch
  embeddings or the pixels.
- The explainers: ``full.py`` (``lrp``), ``partial.py`` (``partial_lrp``), ``transformer_attribution.py``,
  ``attnlrp.py``.
"""

from lightning_vitx.explainers.lrp.attnlrp import AttnLRP
from lightning_vitx.explainers.lrp.composites import Composite, Entry, explicit, modified_backward
from lightning_vitx.explainers.lrp.full import LRP
from lightning_vitx.explainers.lrp.partial import PartialLRP
from lightning_vitx.explainers.lrp.transformer_attribution import TransformerAttribution

__all__ = [
    "LRP",
    "AttnLRP",
    "Composite",
    "Entry",
    "PartialLRP",
    "TransformerAttribution",
    "explicit",
    "modified_backward",
]
