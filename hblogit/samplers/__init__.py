"""Samplers behind one protocol (see ``base``), registered by name.

Adding a sampler: write a module with a class decorated ``@register("name")`` and import
it below.
"""

from . import chees, gibbs, hmc, mams, mclmc, meads, numpyro_nuts, nuts  # noqa: F401  (each registers itself)
from .base import SAMPLERS, Sampler, StepStats, get_sampler, register

__all__ = ["SAMPLERS", "Sampler", "StepStats", "get_sampler", "register"]
