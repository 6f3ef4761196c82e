"""The post's PyMC model, kept as the oracle for hblogit's log-density, gradient and posterior.

Importing PyMC switches on JAX's x64 mode for the whole process, so nothing in ``hblogit``
imports this package at module level.
"""

from .model import PYMC_NAMES, build_model, params_to_point, point_to_params

__all__ = ["PYMC_NAMES", "build_model", "params_to_point", "point_to_params"]
