"""hblogit: Bayesian hierarchical logistic regression, sampled by MCMC in JAX."""

from .data import Dataset, Simulated, Truth, simulate
from .fit import fit
from .io import load_table
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
    "load_table",
    "logdensity",
    "make_logdensity",
    "simulate",
]
