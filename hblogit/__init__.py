"""hblogit: Bayesian hierarchical logistic regression, sampled by MCMC in JAX."""

import warnings

# `python -m hblogit.fit` runs the module whose function this package binds as `hblogit.fit`
# (see DESIGN.md): runpy then warns that the module was imported with the package. The
# module has no import-time effects, so running it twice is harmless.
warnings.filterwarnings("ignore", message="'hblogit.fit' found in sys.modules", category=RuntimeWarning)

from .data import CovariateWarning, Dataset, Simulated, Truth, simulate
from .fit import fit
from .io import load_table
from .model import Constrained, Params, constrain, init_params, logdensity, make_logdensity
from .runner import SamplingError

__all__ = [
    "Constrained",
    "CovariateWarning",
    "Dataset",
    "Params",
    "SamplingError",
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
