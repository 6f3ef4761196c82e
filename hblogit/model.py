"""The model: parameters, the log-density with its hand-written gradient, starting points.

    logit p_i = alpha + sigma_alpha z_alpha[g_i] + x_i . (beta + sigma_gamma * z_gamma[g_i])

``logdensity(params, dataset)`` equals PyMC's ``model.compile_logp()`` at the same point,
normalising constants and the log-Jacobians of both log transforms included. It takes the
data in either layout: a Dataset (segment sums over sorted rows) or a BlockedDataset
(``hblogit.layout``, dense blocks, faster on a CPU); ``make_logdensity`` chooses.

Precision follows the arguments: per-row work, and the sums over a group's rows, run in the
data's dtype (``dataset.X``); the value, the sums over groups, and the gradient run in the
parameters' dtype. Float64 parameters over float32 data is the "mixed" mode the runner uses
by default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from . import fused
from .data import Dataset
from .layout import Block, BlockedDataset, block_dataset

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


def _group_coefficients(params: Params, dtype) -> tuple[jax.Array, jax.Array]:
    """Per-group intercepts (G,) and slopes (G, K), formed once per group in ``dtype``."""
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    intercepts = (params.alpha + sigma_alpha * params.z_alpha).astype(dtype)
    slopes = (params.beta + sigma_gamma * params.z_gamma).astype(dtype)
    return intercepts, slopes


_SORTED_GATHER = dict(indices_are_sorted=True, mode="promise_in_bounds")


def _linear_predictor(params: Params, data: Dataset) -> jax.Array:
    """eta for every (group-sorted) row, in the data's dtype.

    The per-group intercepts and slopes are gathered to rows: one (N, K) gather rather
    than one per parameter block.
    """
    intercepts, slopes = _group_coefficients(params, data.X.dtype)
    rows_slopes = slopes.at[data.group_idx].get(**_SORTED_GATHER)
    return intercepts.at[data.group_idx].get(**_SORTED_GATHER) + jnp.sum(data.X * rows_slopes, axis=-1)


def _outcome_sign(data: Dataset) -> jax.Array:
    """s_i = 1 - 2 y_i, so that log p(y_i | eta_i) = -softplus(s_i eta_i), stable for any eta.

    A padding row (``hblogit.sharding``) has y = 1/2, so s = 0: its residual is zero, and
    the value and the information weight are multiplied by s^2 (exactly 1 on real rows).
    """
    return 1 - 2 * data.y


def _accumulate_dtype(params: Params):
    return jnp.result_type(params.z_gamma)


def _segments(data: Dataset) -> dict:
    """``jax.ops.segment_sum``'s arguments for per-row terms summed by group."""
    return dict(segment_ids=data.group_idx, num_segments=data.num_groups, indices_are_sorted=True)


def log_likelihood_of_eta(eta: jax.Array, data: Dataset, accumulate) -> jax.Array:
    """sum_i log p(y_i | eta_i), summed in ``accumulate``, for the rows' linear predictor."""
    return jnp.sum(_row_terms(_outcome_sign(data), eta)[0], dtype=accumulate)


def log_likelihood_autodiff(params: Params, data: Dataset) -> jax.Array:
    """The Bernoulli log-likelihood with JAX's own gradient: the check on the hand-written one."""
    return log_likelihood_of_eta(_linear_predictor(params, data), data, _accumulate_dtype(params))


def _grad_from_sums(params: Params, S: jax.Array, T: jax.Array) -> Params:
    """The gradient from the per-group residual sums S_g = sum r_i and T_g = sum r_i x_i.

    With r_i = d log p(y_i) / d eta_i: alpha: sum_g S_g; beta: sum_g T_g; z_alpha: sigma_alpha S;
    z_gamma: sigma_gamma T; and the log scales through the chain rule through sigma = exp(log sigma).
    """
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
    return jax.tree.map(lambda g, p: g.astype(p.dtype), grad, params)


def _segment_value_and_grad(params: Params, data: Dataset) -> tuple[jax.Array, Params]:
    """Value and gradient in one pass over the group-sorted rows, S and T as segment sums."""
    accumulate = _accumulate_dtype(params)
    log_p, residual, _ = _row_terms(_outcome_sign(data), _linear_predictor(params, data))
    S = jax.ops.segment_sum(residual, **_segments(data)).astype(accumulate)
    T = jax.ops.segment_sum(residual[:, None] * data.X, **_segments(data)).astype(accumulate)
    return jnp.sum(log_p, dtype=accumulate), _grad_from_sums(params, S, T)


def _piece_coefficients(block: Block, intercepts: jax.Array, slopes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The intercept (pieces,) and slopes (K, pieces) of each piece's group."""
    return intercepts.at[block.owner].get(**_SORTED_GATHER), slopes.at[block.owner].get(**_SORTED_GATHER).T


def _block_eta(block: Block, intercepts: jax.Array, slopes: jax.Array) -> jax.Array:
    """The linear predictor (width, pieces) of a block's rows: K elementwise terms."""
    piece_intercepts, piece_slopes = _piece_coefficients(block, intercepts, slopes)
    rows = jnp.zeros_like(block.sign)  # the shape of the rows, also where K = 0
    return piece_intercepts + sum((block.X[k] * piece_slopes[k] for k in range(block.X.shape[0])), rows)


def _block_sums(block: Block, intercepts: jax.Array, slopes: jax.Array, accumulate):
    """Value, S (pieces,) and T (pieces, K) of one block, as sums of whole arrays.

    The sums over covariates and over rows are unrolled into elementwise terms (see
    ``hblogit.layout``). The barriers keep XLA from fusing eta into each of its consumers,
    the residuals into the sum T (recomputed once per term), and the sums into the
    gather to groups (which would compute them piece by piece, in gather order).
    """
    width = block.X.shape[1]
    eta = jax.lax.optimization_barrier(_block_eta(block, intercepts, slopes))
    log_p, residual = jax.lax.optimization_barrier(_row_terms(block.sign, eta)[:2])
    S = sum(residual[m] for m in range(width))
    T = sum(residual[m] * block.X[:, m] for m in range(width))
    S, T = jax.lax.optimization_barrier((S, T))
    return jnp.sum(log_p, dtype=accumulate), S.astype(accumulate), T.T.astype(accumulate)


def _fused_block_sums(block: Block, intercepts: jax.Array, slopes: jax.Array, accumulate):
    """``_block_sums`` by ``hblogit.fused``'s kernel: one pass over the block's X."""
    log_p, S, T = fused.piece_sums(*_piece_coefficients(block, intercepts, slopes), block.X, block.sign)
    return jnp.sum(log_p, dtype=accumulate), S.astype(accumulate), T.T.astype(accumulate)


def _pieces_to_groups(per_piece: jax.Array, data: BlockedDataset) -> jax.Array:
    """Per-group sums from per-piece sums: a gather of G rows, plus the rare extra pieces."""
    zero = jnp.zeros((1, *per_piece.shape[1:]), per_piece.dtype)  # for the empty groups
    padded = jnp.concatenate([per_piece, zero])
    per_group = padded.at[data.first_piece].get(mode="promise_in_bounds")
    if data.extra_piece.shape[0]:
        extra = padded.at[data.extra_piece].get(mode="promise_in_bounds")
        per_group = per_group.at[data.extra_owner].add(extra, mode="promise_in_bounds")
    return per_group


def _blocked_value_and_grad(params: Params, data: BlockedDataset) -> tuple[jax.Array, Params]:
    """Value and gradient over the blocked layout: no per-row gather, and no scatter but
    for the extra pieces of groups longer than the widest block."""
    accumulate = _accumulate_dtype(params)
    intercepts, slopes = _group_coefficients(params, data.blocks[0].X.dtype)
    block_sums = _fused_block_sums if data.fused else _block_sums
    values, S, T = zip(*(block_sums(block, intercepts, slopes, accumulate) for block in data.blocks))
    S = _pieces_to_groups(jnp.concatenate(S), data)
    T = _pieces_to_groups(jnp.concatenate(T), data)
    return sum(values), _grad_from_sums(params, S, T)


class GroupTerms(NamedTuple):
    """Each group's log-likelihood, and its gradient and information (minus its Hessian) in
    the group's own coefficients: intercept first, then the K slopes."""

    log_likelihood: jax.Array  # (G,)
    gradient: jax.Array  # (G, K + 1)
    information: jax.Array  # (G, K + 1, K + 1)


def _row_terms(sign, eta):
    """log p(y | eta), its derivative in eta and the Bernoulli weight p (1 - p), per row
    (zero on padding rows, where the sign is zero).

    With a = s eta and e = exp(-|a|): log p = -softplus(a) = -(max(a, 0) + log1p(e)),
    sigmoid(a) = 1 / (1 + e) for a >= 0 and e / (1 + e) below, and p (1 - p) = e / (1 + e)^2:
    one exponential for all three, each accurate in both tails. The kinks are written as
    selects on a >= 0, not as max and abs, so that JAX's derivative of log p is -sigmoid(a)
    at a = 0 too (autodiff is the check on the hand-written gradient)."""
    signed_eta = sign * eta
    nonnegative = signed_eta >= 0
    e = jnp.exp(jnp.where(nonnegative, -signed_eta, signed_eta))
    inverse = 1 / (1 + e)
    square_sign = jnp.square(sign)
    return (
        -(jnp.where(nonnegative, signed_eta, 0) + jnp.log1p(e)) * square_sign,
        -sign * jnp.where(nonnegative, 1, e) * inverse,
        e * jnp.square(inverse) * square_sign,
    )


def _segment_group_terms(params: Params, data: Dataset) -> GroupTerms:
    """Per-row terms summed by group; the information as an (N, K + 1, K + 1) segment sum of
    outer products (this layout serves small data: large data on a CPU is blocked)."""
    accumulate = _accumulate_dtype(params)
    log_p, residual, weight = _row_terms(_outcome_sign(data), _linear_predictor(params, data))
    covariates = jnp.concatenate([jnp.ones((data.X.shape[0], 1), data.X.dtype), data.X], axis=1)
    per_row = (log_p, residual[:, None] * covariates, weight[:, None, None] * covariates[:, :, None] * covariates[:, None, :])
    return GroupTerms(*(jax.ops.segment_sum(t, **_segments(data)).astype(accumulate) for t in per_row))


def _blocked_group_terms(params: Params, data: BlockedDataset) -> GroupTerms:
    """Per-piece sums over each block's rows (batched small matrix products for the
    information), then gathered to groups as the gradient's sums are."""
    accumulate = _accumulate_dtype(params)
    intercepts, slopes = _group_coefficients(params, data.blocks[0].X.dtype)
    pieces = []
    for block in data.blocks:
        log_p, residual, weight = _row_terms(block.sign, _block_eta(block, intercepts, slopes))
        covariates = jnp.concatenate([jnp.ones((1, *block.X.shape[1:]), block.X.dtype), block.X])  # (K + 1, width, pieces)
        pieces.append(
            (
                jnp.sum(log_p, axis=0),
                jnp.einsum("mp,kmp->pk", residual, covariates),
                jnp.einsum("kmp,lmp->pkl", covariates * weight, covariates),
            )
        )
    return GroupTerms(*(_pieces_to_groups(jnp.concatenate(t).astype(accumulate), data) for t in zip(*pieces)))


def group_terms(params: Params, data: Dataset | BlockedDataset) -> GroupTerms:
    """``GroupTerms`` at ``params``, in either layout: per-row work and sums over a group's rows
    in the data's dtype, returned in the parameters'. What a per-group Newton step or Laplace
    approximation needs."""
    if isinstance(data, BlockedDataset):
        return _blocked_group_terms(params, data)
    return _segment_group_terms(params, data)


def _log_likelihood_value_and_grad(params: Params, data: Dataset | BlockedDataset) -> tuple[jax.Array, Params]:
    if isinstance(data, BlockedDataset):
        return _blocked_value_and_grad(params, data)
    return _segment_value_and_grad(params, data)


def fisher_diagonal(params: Params, data: Dataset) -> Params:
    """The diagonal of the expected information (minus the Hessian of the log-density) at ``params``.

    Each coordinate's precision with the others held fixed: prior curvature plus the
    Bernoulli information sum_i w_i (d eta_i / d theta)^2 with w_i = p_i (1 - p_i), from the
    same segment sums as the gradient. Its inverse is a cheap first diagonal mass matrix for
    HMC, far closer to the posterior's scales than the identity (the global coefficients'
    posterior sds are ~1e-2 at the post's size, the z's ~1).
    """
    return jax.tree.map(jnp.add, likelihood_information(params, data), prior_information(params))


def likelihood_information(params: Params, data: Dataset) -> Params:
    """The likelihood's part of ``fisher_diagonal``: its global entries are sums over groups."""
    accumulate = _accumulate_dtype(params)
    weight = _row_terms(_outcome_sign(data), _linear_predictor(params, data))[2]
    Sw = jax.ops.segment_sum(weight, **_segments(data)).astype(accumulate)
    Swx2 = jax.ops.segment_sum(weight[:, None] * jnp.square(data.X), **_segments(data)).astype(accumulate)
    sigma_alpha = jnp.exp(params.log_sigma_alpha)
    sigma_gamma = jnp.exp(params.log_sigma_gamma)
    return Params(
        alpha=jnp.sum(Sw),
        beta=jnp.sum(Swx2, axis=0),
        log_sigma_alpha=sigma_alpha**2 * jnp.sum(jnp.square(params.z_alpha) * Sw),
        log_sigma_gamma=sigma_gamma**2 * jnp.sum(jnp.square(params.z_gamma) * Swx2, axis=0),
        z_alpha=sigma_alpha**2 * Sw,
        z_gamma=sigma_gamma**2 * Swx2,
    )


def prior_information(params: Params) -> Params:
    """The prior's part of ``fisher_diagonal``."""
    return Params(
        alpha=jnp.full_like(params.alpha, PRIOR_SD_ALPHA**-2),
        beta=jnp.full_like(params.beta, PRIOR_SD_BETA**-2),
        log_sigma_alpha=jnp.exp(2 * params.log_sigma_alpha) * 2 / PRIOR_SD_SIGMA_ALPHA**2,
        log_sigma_gamma=jnp.exp(2 * params.log_sigma_gamma) * 2 / PRIOR_SD_SIGMA_GAMMA**2,
        z_alpha=jnp.ones_like(params.z_alpha),
        z_gamma=jnp.ones_like(params.z_gamma),
    )


def with_hand_gradient(value_and_grad):
    """``f(params, data)`` returning ``value_and_grad(params, data)[0]``, whose gradient
    (``jax.grad``, ``vjp``) is the hand-written one that ``value_and_grad`` returns.

    Only the value is used by ``f`` itself, so under ``jit`` XLA drops the gradient's work
    when no gradient is asked for.
    """

    @jax.custom_vjp
    def f(params, data):
        return value_and_grad(params, data)[0]

    def backward(grad, cotangent):
        return jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad), None

    f.defvjp(value_and_grad, backward)
    return f


log_likelihood = with_hand_gradient(_log_likelihood_value_and_grad)
log_likelihood.__doc__ = """The Bernoulli log-likelihood; its gradient is the hand-written one.

``data`` is a Dataset (segment sums) or its BlockedDataset (``hblogit.layout``)."""


def logdensity(params: Params, data: Dataset | BlockedDataset) -> jax.Array:
    """log p(params, y | X) on the unconstrained scale: PyMC's ``compile_logp`` value."""
    return log_prior(params) + log_likelihood(params, data)


def logdensity_autodiff(params: Params, data: Dataset) -> jax.Array:
    """The same density differentiated by JAX: a documented helper for checks, not for speed."""
    return log_prior(params) + log_likelihood_autodiff(params, data)


_logdensity_jit = jax.jit(logdensity)


# Below this many rows an evaluation takes microseconds either way and the blocked layout's
# longer compile dominates; its shapes also depend on the group sizes, so datasets of one
# (N, G, K) share a compilation only in the segment layout. From 3,000 rows up the blocked
# layout was measured 1.8-2.6x faster with 4 vmapped chains on the 2-core CPU.
BLOCKED_MIN_ROWS = 2_000
# On an H100 at the post's size (N = 1e6, G = 1e5, K = 20; experiments/RESULTS.md) the two
# layouts cost the same for one chain (0.39 ms) and blocked half as much with 4 or 8 vmapped
# chains (0.20 against 0.44 ms per chain at 4). Smaller data was not measured on a GPU, so
# it keeps segment sums there.
BLOCKED_MIN_ROWS_GPU = 1_000_000


LAYOUTS = ("auto", "segment", "blocked", "fused")


def choose_layout(dataset: Dataset, layout: str = "auto") -> str:
    """``"segment"``, ``"blocked"`` or ``"fused"``; ``"auto"`` picks blocked for large data:
    from ``BLOCKED_MIN_ROWS`` rows on a CPU (several times faster at the post's size on 2
    cores), from ``BLOCKED_MIN_ROWS_GPU`` on a GPU. ``"fused"`` (the blocked layout summed
    by ``hblogit.fused``'s GPU kernel) is asked for by name only: its speed on a GPU is not
    measured yet, and on a CPU it runs in Pallas' interpreter, for tests."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    if layout != "auto":
        return layout
    threshold = BLOCKED_MIN_ROWS if jax.default_backend() == "cpu" else BLOCKED_MIN_ROWS_GPU
    return "blocked" if dataset.num_obs >= threshold else "segment"


class LogDensity(eqx.Module):
    """``logdensity(params)`` bound to a dataset, in the layout chosen for it.

    A pytree (the arrays are leaves), so it can be passed into ``jit`` as an argument
    rather than closed over as constants; its calls share one compiled program per data
    shape (for the blocked layout, its block shapes).

    Besides the density, it answers what the runner asks of a parameter space: a random
    start, the two parts of the density (to name the one that is not finite), and the
    information diagonal. ``hblogit.sharding.ShardedLogDensity`` answers the same for
    parameters spread over devices.
    """

    dataset: Dataset
    data: Dataset | BlockedDataset

    def __call__(self, params: Params) -> jax.Array:
        return _logdensity_jit(params, self.data)

    def init_params(self, key, dtype=None) -> Params:
        return init_params(key, self.dataset, dtype=dtype)

    def log_prior(self, params: Params) -> jax.Array:
        return log_prior(params)

    def log_likelihood(self, params: Params) -> jax.Array:
        return log_likelihood(params, self.data)

    def fisher_diagonal(self, params: Params) -> Params:
        return fisher_diagonal(params, self.dataset)


def make_logdensity(dataset: Dataset, *, layout: str = "auto") -> LogDensity:
    """``logdensity(params) -> scalar``, with the hand-written gradient under ``jax.grad``.

    ``layout``: ``"segment"`` (segment sums over the sorted rows), ``"blocked"``
    (``hblogit.layout``), ``"fused"`` (blocked, one-pass GPU kernel: ``hblogit.fused``) or
    ``"auto"`` (see ``choose_layout``).
    """
    chosen = choose_layout(dataset, layout)
    if chosen == "segment":
        return LogDensity(dataset, dataset)
    return LogDensity(dataset, block_dataset(dataset, fused=chosen == "fused"))


def param_shapes(dataset) -> Params:
    """The parameters' shapes for anything with ``num_groups`` and ``num_covariates``."""
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
