"""The post's PyMC model, with converters between ``hblogit.Params`` and PyMC value variables.

The constants take the data's dtype, as the post's ``np.float32(...)`` constants do: float64
data gives a float64 graph and exact float64 comparisons. (A plain Python float such as 1.5,
which float32 holds exactly, would become a float32 constant under PyTensor's default cast
policy and cost the float64 graph ~1e-8 in log(1.5).)
"""

from __future__ import annotations

import numpy as np

# hblogit.Params field -> PyMC value-variable name
PYMC_NAMES = {
    "alpha": "α",
    "beta": "β",
    "log_sigma_alpha": "σ_α_log__",
    "log_sigma_gamma": "σ_γ_log__",
    "z_alpha": "z_α",
    "z_gamma": "z_γ",
}


def build_model(X, y, group_idx, num_groups=None):
    """The post's ``build_model``; ``num_groups`` allows groups with no rows."""
    import pymc as pm
    import pytensor.tensor as pt

    X = np.asarray(X)
    c = X.dtype.type if X.dtype in (np.float32, np.float64) else np.float64
    y = np.asarray(y, dtype=np.int64)
    group_idx = np.asarray(group_idx, dtype=np.int64)
    N, K = X.shape
    G = int(group_idx.max()) + 1 if num_groups is None else int(num_groups)
    coords = {"obs": np.arange(N), "group": np.arange(G), "covariate": np.arange(K)}
    with pm.Model(coords=coords) as model:
        X_data = pm.Data("X", X, dims=("obs", "covariate"))
        group_lookup = pt.as_tensor_variable(group_idx, name="group_lookup")
        α = pm.Normal("α", c(0.0), c(1.5))
        β = pm.Normal("β", c(0.0), c(1.0), dims="covariate")
        σ_α = pm.HalfNormal("σ_α", c(1.0))
        σ_γ = pm.HalfNormal("σ_γ", c(0.5), dims="covariate")
        z_α = pm.Normal("z_α", c(0.0), c(1.0), dims="group")
        z_γ = pm.Normal("z_γ", c(0.0), c(1.0), dims=("group", "covariate"))
        α_group = σ_α * z_α
        γ_group = σ_γ * z_γ
        η = α + α_group[group_lookup] + pm.math.sum(X_data * (β + γ_group[group_lookup]), axis=1)
        pm.Bernoulli("Y", logit_p=η, observed=y, dims="obs")
    return model


def params_to_point(params, dtype=None) -> dict:
    """``hblogit.Params`` -> PyMC's value-variable dict (``model.compile_logp()``'s input)."""
    return {
        PYMC_NAMES[name]: np.asarray(value, dtype=dtype)
        for name, value in params._asdict().items()
    }


def point_to_params(point: dict, dtype=None):
    """PyMC's value-variable dict -> ``hblogit.Params``."""
    from hblogit import Params

    return Params(**{name: np.asarray(point[pymc], dtype=dtype) for name, pymc in PYMC_NAMES.items()})


def split_gradient(model, flat_gradient) -> dict:
    """Split ``compile_dlogp``'s flat vector into hblogit's blocks, by the value-variable order."""
    point = model.initial_point()
    pymc_to_ours = {pymc: ours for ours, pymc in PYMC_NAMES.items()}
    blocks, start = {}, 0
    for var in model.value_vars:
        shape = np.shape(point[var.name])
        size = int(np.prod(shape))
        blocks[pymc_to_ours[var.name]] = np.reshape(flat_gradient[start : start + size], shape)
        start += size
    return blocks
