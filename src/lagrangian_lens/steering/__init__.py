"""Minimal-action steering: Algorithm 1 of the energy paper, its baselines, steered generation, offline judges,
and the paper's Table 3 evaluation.

* ``jacobian``: ``jacobian_steer`` moves a state along ∇_h log p(t*) until p(t*) ≥ η (Theorem E.1: the least
  ‖δh‖ for a given gain, to first order); ``SteeringResult`` holds what it did per pair.
* ``baselines``: the additive, random, best-of-random and logit-bias comparisons at equal ‖δh‖ and equal gain.
* ``inject``: editing a site's state inside a forward, and read-outs through the remaining blocks.
* ``generate``: ``steer_generate``, generation with steering applied at chosen steps.
* ``judges``: embedding, language-model and OpenAI-compatible raters of top-k lists.
* ``evaluate``: the paper's protocol (E.3.1) and Table 3's statistics.
"""
from .baselines import BaselineResult, compare_baselines
from .generate import SteeredGeneration, concept_targets, steer_generate
from .inject import edit_site, site_readout
from .jacobian import LineSearch, SteeringResult, jacobian_steer

__all__ = ["BaselineResult", "LineSearch", "SteeredGeneration", "SteeringResult", "compare_baselines",
           "concept_targets", "edit_site", "jacobian_steer", "site_readout", "steer_generate"]
