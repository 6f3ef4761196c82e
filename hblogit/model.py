"""The model: parameters, the log-density with its hand-written gradient, starting points.

    logit p_i = alpha + sigma_alpha z_alpha[g_i] + x_i . (beta + sigma_gamma * z_gamma[g_i])

``logdensity(params, dataset)`` equals PyMC's ``model.compile_logp()`` at the same point,
normalising constants and the log-Jacobians of both log transforms included.

Precision follows the arguments: per-row work runs in the data's dtype (``dataset.X``), and
every reduction over rows or groups, the value, and the gradient run in the parameters'
dtype. Float64 parameters over float32 data is the "mixed" mode the runner uses by default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .data import Dataset

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)
PRIOR_SD_ALPHA = 1.5
PRIOR_SD_BETA = 1.0
PRIOR_SD_SIGMA_ALPHA = 1.0
PRIOR_SD_SIGMA_GAMMA = 0.5


class Params(NamedTuple):
    """Unconstrained parameters, the space samplers move in (PyMC's value variables)."""

    alpha: jax.Array  # ()      α
    beta: jax.Array  # (K,)     β
    log_sigma_alpha: jax.Array  # ()  σ_α_log__
    log_sigma_gamma: jax.Array  # (K,) σ_γ_log__
    z_alpha: jax.Array  # (G,)   z_α
    z_gamma: jax.Array  # (G, K) z_γ


class Constrained(NamedTuple):
    """The same point on the model's own scale, with the group effects formed."""

    alpha: jax.Array
    beta: jax.Array
    sigma_alpha: jax.Array
    sigma_gamma: jax.Array
    alpha_group: jax.Array
    gamma_group: jax.Array


def constrain(params: Params) -> Constrained:
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    return Constrained(
        alpha=params.alpha,
        beta=params.beta,
        sigma_alpha=sigma_alpha,
        sigma_gamma=sigma_gamma,
        alpha_group=sigma_alpha[..., None] * params.z_alpha,
        gamma_group=sigma_gamma[..., None, :] * params.z_gamma,
    )


def _normal_logpdf(x, sd):
    return -0.5 * jnp.square(x / sd) - math.log(sd) - HALF_LOG_2PI


def _log_half_normal_of_exp(u, sd):
    """log HalfNormal(exp(u) | sd) + u: the density of sigma on the log scale, Jacobian included."""
    return LOG_2 + _normal_logpdf(jnp.exp(u), sd) + u


def log_prior(params: Params) -> jax.Array:
    """Sum of the prior log-densities of every parameter, on the unconstrained scale."""
    num_z = params.z_alpha.size + params.z_gamma.size
    return (
        _normal_logpdf(params.alpha, PRIOR_SD_ALPHA)
        + jnp.sum(_normal_logpdf(params.beta, PRIOR_SD_BETA))
        + _log_half_normal_of_exp(params.log_sigma_alpha, PRIOR_SD_SIGMA_ALPHA)
        + jnp.sum(_log_half_normal_of_exp(params.log_sigma_gamma, PRIOR_SD_SIGMA_GAMMA))
        - 0.5 * (jnp.sum(jnp.square(params.z_alpha)) + jnp.sum(jnp.square(params.z_gamma)))
        - num_z * HALF_LOG_2PI
    )


def _linear_predictor(params: Params, data: Dataset) -> jax.Array:
    """eta for every (group-sorted) row, in the data's dtype.

    The per-group intercepts and slopes are formed once per group (G x K work), then
    gathered to rows: one (N, K) gather rather than one per parameter block.
    """
    compute = data.X.dtype
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    intercepts = (params.alpha + sigma_alpha * params.z_alpha).astype(compute)
    slopes = (params.beta + sigma_gamma * params.z_gamma).astype(compute)
    gather = dict(indices_are_sorted=True, mode="promise_in_bounds")
    rows_slopes = slopes.at[data.group_idx].get(**gather)
    return intercepts.at[data.group_idx].get(**gather) + jnp.sum(data.X * rows_slopes, axis=-1)


def _outcome_sign(data: Dataset) -> jax.Array:
    """s_i = 1 - 2 y_i, so that log p(y_i | eta_i) = -softplus(s_i eta_i), stable for any eta."""
    return 1 - 2 * data.y


def _accumulate_dtype(params: Params):
    return jnp.result_type(params.z_gamma)


def log_likelihood_autodiff(params: Params, data: Dataset) -> jax.Array:
    """The Bernoulli log-likelihood with JAX's own gradient: the check on the hand-written one."""
    eta = _linear_predictor(params, data)
    return jnp.sum(-jax.nn.softplus(_outcome_sign(data) * eta), dtype=_accumulate_dtype(params))


def _log_likelihood_value_and_grad(params: Params, data: Dataset) -> tuple[jax.Array, Params]:
    """Value and gradient in one pass over the rows.

    With r_i = d log p(y_i) / d eta_i, the per-group sums S_g = sum r_i and
    T_g = sum r_i x_i (segment sums over the sorted groups) give every block:
    alpha: sum_g S_g; beta: sum_g T_g; z_alpha: sigma_alpha S; z_gamma: sigma_gamma T;
    and the log scales through the chain rule through sigma = exp(log sigma).
    """
    accumulate = _accumulate_dtype(params)
    sign = _outcome_sign(data)
    signed_eta = sign * _linear_predictor(params, data)
    value = jnp.sum(-jax.nn.softplus(signed_eta), dtype=accumulate)
    residual = -sign * jax.nn.sigmoid(signed_eta)
    segment = dict(segment_ids=data.group_idx, num_segments=data.num_groups, indices_are_sorted=True)
    S = jax.ops.segment_sum(residual, **segment).astype(accumulate)
    T = jax.ops.segment_sum(residual[:, None] * data.X, **segment).astype(accumulate)
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    grad = Params(
        alpha=jnp.sum(S),
        beta=jnp.sum(T, axis=0),
        log_sigma_alpha=sigma_alpha * jnp.sum(params.z_alpha * S),
        log_sigma_gamma=sigma_gamma * jnp.sum(params.z_gamma * T, axis=0),
        z_alpha=sigma_alpha * S,
        z_gamma=sigma_gamma * T,
    )
    grad = jax.tree.map(lambda g, p: g.astype(p.dtype), grad, params)
    return value, grad


def fisher_diagonal(params: Params, data: Dataset) -> Params:
    """The diagonal of the expected information (minus the Hessian of the log-density) at ``params``.

    Each coordinate's precision with the others held fixed: prior curvature plus the
    Bernoulli information sum_i w_i (d eta_i / d theta)^2 with w_i = p_i (1 - p_i), from the
    same segment sums as the gradient. Its inverse is a cheap first diagonal mass matrix for
    HMC, far closer to the posterior's scales than the identity (the global coefficients'
    posterior sds are ~1e-2 at the post's size, the z's ~1).
    """
    accumulate = _accumulate_dtype(params)
    p = jax.nn.sigmoid(_linear_predictor(params, data))
    weight = p * (1 - p)
    segment = dict(segment_ids=data.group_idx, num_segments=data.num_groups, indices_are_sorted=True)
    Sw = jax.ops.segment_sum(weight, **segment).astype(accumulate)
    Swx2 = jax.ops.segment_sum(weight[:, None] * jnp.square(data.X), **segment).astype(accumulate)
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    return Params(
        alpha=jnp.sum(Sw) + PRIOR_SD_ALPHA**-2,
        beta=jnp.sum(Swx2, axis=0) + PRIOR_SD_BETA**-2,
        log_sigma_alpha=sigma_alpha**2 * (jnp.sum(jnp.square(params.z_alpha) * Sw) + 2 / PRIOR_SD_SIGMA_ALPHA**2),
        log_sigma_gamma=sigma_gamma**2 * (jnp.sum(jnp.square(params.z_gamma) * Swx2, axis=0) + 2 / PRIOR_SD_SIGMA_GAMMA**2),
        z_alpha=sigma_alpha**2 * Sw + 1,
        z_gamma=sigma_gamma**2 * Swx2 + 1,
    )


@jax.custom_vjp
def log_likelihood(params: Params, data: Dataset) -> jax.Array:
    """The Bernoulli log-likelihood; its gradient is the hand-written one below."""
    return log_likelihood_autodiff(params, data)


def _log_likelihood_fwd(params, data):
    return _log_likelihood_value_and_grad(params, data)


def _log_likelihood_bwd(grad, cotangent):
    return jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad), None


log_likelihood.defvjp(_log_likelihood_fwd, _log_likelihood_bwd)


def logdensity(params: Params, data: Dataset) -> jax.Array:
    """log p(params, y | X) on the unconstrained scale: PyMC's ``compile_logp`` value."""
    return log_prior(params) + log_likelihood(params, data)


def logdensity_autodiff(params: Params, data: Dataset) -> jax.Array:
    """The same density differentiated by JAX: a documented helper for checks, not for speed."""
    return log_prior(params) + log_likelihood_autodiff(params, data)


_logdensity_jit = jax.jit(logdensity)


class LogDensity(eqx.Module):
    """``logdensity(params)`` bound to a dataset.

    A pytree (the dataset's arrays are leaves), so it can be passed into ``jit`` as an
    argument rather than closed over as constants; its calls share one compiled program per
    dataset shape.
    """

    dataset: Dataset

    def __call__(self, params: Params) -> jax.Array:
        return _logdensity_jit(params, self.dataset)


def make_logdensity(dataset: Dataset) -> LogDensity:
    """``logdensity(params) -> scalar``, with the hand-written gradient under ``jax.grad``."""
    return LogDensity(dataset)


def param_shapes(dataset: Dataset) -> Params:
    K, G = dataset.num_covariates, dataset.num_groups
    return Params((), (K,), (), (K,), (G,), (G, K))


def init_params(key, dataset: Dataset, *, radius: float = 2.0, dtype=None) -> Params:
    """A random point, every unconstrained coordinate uniform on (-radius, radius) as in Stan.

    ``dtype`` defaults to float64 when x64 is enabled, else float32.
    """
    dtype = dtype or jnp.result_type(float)
    shapes = param_shapes(dataset)
    keys = jax.random.split(key, len(shapes))
    return Params(
        *(
            jax.random.uniform(k, shape, dtype, minval=-radius, maxval=radius)
            for k, shape in zip(keys, shapes)
        )
    )
