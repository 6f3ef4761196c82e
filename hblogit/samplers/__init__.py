"""Samplers behind one protocol (see ``base``), registered by name.

Adding a sampler: write a module with a class decorated ``@register("name")`` and import
it below.
"""

from . import nuts  # noqa: F401  (registers "nuts")
from .base import SAMPLERS, Sampler, StepStats, get_sampler, register

__all__ = ["SAMPLERS", "Sampler", "StepStats", "get_sampler", "register"]
