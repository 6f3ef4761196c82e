"""hblogit: Bayesian hierarchical logistic regression, sampled by MCMC in JAX."""

from .data import Dataset, Simulated, Truth, simulate
from .fit import fit
from .model import Constrained, Params, constrain, init_params, logdensity, make_logdensity

__all__ = [
    "Constrained",
    "Dataset",
    "Params",
    "Simulated",
    "Truth",
    "constrain",
    "fit",
    "init_params",
    "logdensity",
    "make_logdensity",
    "simulate",
]
