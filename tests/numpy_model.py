"""The model's log-density written again in NumPy and SciPy, group by group: an independent
check on the JAX code (its sums, gathers, layouts and hand-written gradient)."""

import numpy as np
from scipy import stats


def _as_numpy(params) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in params._asdict().items()}


def log_prior(params) -> float:
    """Every prior term on the unconstrained scale, with the log-Jacobian u of sigma = exp(u)."""
    p = _as_numpy(params)
    return float(
        stats.norm.logpdf(p["alpha"], scale=1.5)
        + stats.norm.logpdf(p["beta"], scale=1.0).sum()
        + stats.halfnorm.logpdf(np.exp(p["log_sigma_alpha"]), scale=1.0)
        + p["log_sigma_alpha"]
        + (stats.halfnorm.logpdf(np.exp(p["log_sigma_gamma"]), scale=0.5) + p["log_sigma_gamma"]).sum()
        + stats.norm.logpdf(p["z_alpha"]).sum()
        + stats.norm.logpdf(p["z_gamma"]).sum()
    )


def rows_log_likelihood(intercept, slopes, X, y) -> float:
    """sum_i log Bernoulli(y_i | sigmoid(eta_i)) for rows sharing one intercept and slopes.

    log sigmoid(t) = -log(1 + exp(-t)), as ``logaddexp`` (finite for any t).
    """
    eta = intercept + np.asarray(X, np.float64) @ slopes
    signed = np.where(np.asarray(y) == 1, eta, -eta)
    return float(-np.logaddexp(0.0, -signed).sum())


def group_log_likelihoods(params, X, y, group_idx, num_groups) -> np.ndarray:
    """Each group's log-likelihood from its own rows and its own z's alone (0 for an empty group)."""
    p = _as_numpy(params)
    intercepts = p["alpha"] + np.exp(p["log_sigma_alpha"]) * p["z_alpha"]
    slopes = p["beta"] + np.exp(p["log_sigma_gamma"]) * p["z_gamma"]
    group_idx = np.asarray(group_idx)
    return np.array(
        [
            rows_log_likelihood(intercepts[g], slopes[g], np.asarray(X)[group_idx == g], np.asarray(y)[group_idx == g])
            for g in range(num_groups)
        ]
    )
