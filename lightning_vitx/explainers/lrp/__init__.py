"""The LRP family: four explainers on two engines, their rules and the one support check.

- ``rules.py``: the relevance rules of Chefer et al.'s code, one function per operation, and the two rule sets
  (``CHEFER``: the method's; ``BASELINE``: the LRP baselines').
- The explicit engine (``lrp``, ``partial_lrp``, ``transformer_attribution``): ``relevance.py`` records a hooked
  forward and carries the relevance down the blocks with those rules, no gradients; ``passes.py`` reads it at the
  blocks, the patch embeddings or the pixels.
- The modified backward (``attnlrp``, AttnLRP / CP-LRP): ``modified_backward.py`` replaces the gradients of the
  modules on the relevance path by the rules, so one backward gives the relevance.
- ``support.py``: which models each engine covers.
- The explainers: ``full.py`` (``lrp``), ``partial.py`` (``partial_lrp``), ``transformer_attribution.py``,
  ``attnlrp.py``.
"""

from lightning_vitx.explainers.lrp.attnlrp import AttnLRP
from lightning_vitx.explainers.lrp.full import LRP
from lightning_vitx.explainers.lrp.partial import PartialLRP
from lightning_vitx.explainers.lrp.rules import BASELINE, CHEFER, Rules
from lightning_vitx.explainers.lrp.support import check_backward_supported, check_pixel_rule, check_supported
from lightning_vitx.explainers.lrp.transformer_attribution import TransformerAttribution

__all__ = [
    "BASELINE",
    "CHEFER",
    "LRP",
    "AttnLRP",
    "PartialLRP",
    "Rules",
    "TransformerAttribution",
    "check_backward_supported",
    "check_pixel_rule",
    "check_supported",
]
