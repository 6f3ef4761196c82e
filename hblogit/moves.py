"""Moves of the scales that a gradient sampler makes slowly, to interleave with its steps.

Samplers move in the non-centred space (z ~ N(0, 1), group effect c = location + scale * z),
where a scale and its G z's are tied: the data pin the c's, so a scale moves only as far as
all G z's move with it. With many groups that is little per step, and the slope scales are
the slowest mixers of this model (experiments/RESULTS.md). Three moves go straight along the
directions a step finds hard:

- ``interweave``: hold the c's fixed and draw each scale and location from its conditional,
  which then is the prior's alone (no likelihood): fast where groups are well informed;
- ``transport_scales``: propose a new scale and carry every z along with it, as the
  Gaussian approximation of z | scale, data would (the likelihood linearised per group):
  fast where groups are weakly informed, as at the post's 10 rows a group;
- ``refresh_effects``: every group's z drawn afresh given the globals, by an independence
  Metropolis step from its Laplace approximation; the z-step of the ``gibbs`` sampler.

Each returns the new point and the change of the log-density it targets (the model's), so
that the caller can check it against the density it samples and reject a move the density
disagrees with (``WindowAdapted._move``): a density that is not this model's, or one
that is NaN somewhere, then stays exact. For that check to be a valid Metropolis-Hastings
step the moves together must be reversible: each is a palindrome of reversible steps or
draws their order at random, and the sampler applies them as a palindrome (interweave,
transport, interweave).

A family is one (location, scale, z column) triple: the intercepts (alpha, sigma_alpha,
z_alpha) and each slope k (beta_k, sigma_gamma_k, z_gamma[:, k]).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import small_linalg
from .checks import integer
from .data import Dataset
from .layout import BlockedDataset
from .model import (
    PRIOR_SD_ALPHA,
    PRIOR_SD_BETA,
    PRIOR_SD_SIGMA_ALPHA,
    PRIOR_SD_SIGMA_GAMMA,
    _SORTED_GATHER,
    Params,
    _block_eta,
    _group_coefficients,
    _linear_predictor,
    _outcome_sign,
    _pieces_to_groups,
    _row_terms,
    _segments,
    group_terms,
    log_prior,
)

TRANSPORT_STEP = 2.0  # proposal sd of a log scale, in units of its posterior sd (the mass matrix's)

# Below this many rows a group (on average) the transport move pays for its passes over the
# rows. Measured on a 2-core CPU with nuts (experiments/RESULTS.md): at 10 rows a group
# (G = 2,000, K = 4) it raised the slowest scale's ESS per second 2.9x; at 40 (the small
# preset) the non-centred sampler and interweave already mix the scales, and it cost more
# time than it gained ESS.
TRANSPORT_MAX_ROWS_PER_GROUP = 20


def transport_pays(dataset: Dataset) -> bool:
    """Whether the groups are weakly enough informed for ``transport_scales`` to pay."""
    return dataset.num_obs < TRANSPORT_MAX_ROWS_PER_GROUP * dataset.num_groups


def rows_of(logdensity) -> Dataset | BlockedDataset | None:
    """The data's rows in the layout ``logdensity`` evaluates them in, where it holds them on
    one device (hblogit's ``LogDensity``): None for a sharded density, or one not hblogit's."""
    data = getattr(logdensity, "data", None)
    return data if isinstance(data, (Dataset, BlockedDataset)) else None


def num_groups(params: Params) -> int:
    return params.z_alpha.shape[-1]


class Families(NamedTuple):
    """Every family side by side: column 0 the intercepts, column 1 + k slope k."""

    location: jax.Array  # (K + 1,)
    log_scale: jax.Array  # (K + 1,)
    z: jax.Array  # (G, K + 1)


def families(params: Params) -> Families:
    return Families(
        jnp.concatenate([params.alpha[None], params.beta]),
        jnp.concatenate([params.log_sigma_alpha[None], params.log_sigma_gamma]),
        jnp.concatenate([params.z_alpha[:, None], params.z_gamma], axis=1),
    )


def from_families(f: Families) -> Params:
    return Params(f.location[0], f.location[1:], f.log_scale[0], f.log_scale[1:], f.z[:, 0], f.z[:, 1:])


def _prior_sds(num_covariates: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Prior sds of the locations and of the scales, per family."""
    location = jnp.array([PRIOR_SD_ALPHA] + [PRIOR_SD_BETA] * num_covariates, dtype)
    scale = jnp.array([PRIOR_SD_SIGMA_ALPHA] + [PRIOR_SD_SIGMA_GAMMA] * num_covariates, dtype)
    return location, scale


def _scale_given_centred(key, location, variance, centred, prior_sd_scale):
    """scale^2 | c, location (every family at once). In u = log scale^2 its density is
    proportional to exp(-a u - b e^-u - e^u / (2 prior_sd^2)): an inverse gamma's (a = (G -
    1) / 2, b = SS / 2, SS = sum (c - location)^2) times the half-normal prior's factor.

    An independence Metropolis step proposes u ~ N(log(b / a), 1 / a), the Laplace
    approximation of the inverse gamma's part, and accepts with the ratio of target to
    proposal: nearly always, with many groups. The target's tails fall doubly exponentially
    on both sides, faster than the proposal's, so the ratio is bounded. It takes K + 1 random
    numbers; an exact inverse-gamma draw takes a chi-square, i.e. G - 1 normals per family
    (the bulk of this move's time at 5,000 groups on a CPU) or ``jax.random.gamma``'s
    rejection loop (a second to compile at each of the four places a transition uses it).
    """
    dtype = centred.dtype
    key_proposal, key_accept = jax.random.split(key)
    shape = (centred.shape[0] - 1) / 2
    rate = jnp.sum(jnp.square(centred - location), axis=0) / 2
    mean, sd = jnp.log(rate / shape), shape**-0.5

    def log_target(u):
        return -shape * u - rate * jnp.exp(-u) - jnp.exp(u) / (2 * jnp.square(prior_sd_scale))

    def log_proposal(u):
        return -0.5 * jnp.square((u - mean) / sd)

    current = jnp.log(variance)
    proposal = mean + sd * jax.random.normal(key_proposal, location.shape, dtype)
    log_accept = log_target(proposal) - log_target(current) + log_proposal(current) - log_proposal(proposal)
    accept = jnp.log(jax.random.uniform(key_accept, location.shape, dtype)) < log_accept
    return jnp.where(accept, jnp.exp(proposal), variance)


def _location_given_centred(key, variance, centred, prior_sd_location):
    """location | c, scale: normal (normal prior, normal effects)."""
    num_groups, dtype = centred.shape[0], centred.dtype
    precision = jnp.square(prior_sd_location) ** -1 + num_groups / variance
    mean = jnp.sum(centred, axis=0) / variance / precision
    return mean + jax.random.normal(key, variance.shape, dtype) * jax.lax.rsqrt(precision)


def interweave(key, params: Params) -> tuple[Params, jax.Array]:
    """Scales and locations drawn given the centred effects; returns (point, change of log p).

    With the c's held fixed the likelihood is unchanged, so the conditionals are the prior's:
    the ancillarity-sufficiency interweaving of Yu and Meng (2011). Scale, location, scale
    (a palindrome of reversible steps, so reversible); z is then re-expressed as (c -
    location) / scale. Costs O(G K), no likelihood. Needs at least two groups.
    """
    if num_groups(params) < 2:
        raise ValueError(f"interweaving needs at least 2 groups, got {num_groups(params)}")
    f = families(params)
    prior_sd_location, prior_sd_scale = _prior_sds(params.beta.shape[-1], f.z.dtype)
    key_first, key_location, key_last = jax.random.split(key, 3)
    centred = f.location + jnp.exp(f.log_scale) * f.z
    variance = jnp.exp(2 * f.log_scale)
    variance = _scale_given_centred(key_first, f.location, variance, centred, prior_sd_scale)
    location = _location_given_centred(key_location, variance, centred, prior_sd_location)
    variance = _scale_given_centred(key_last, location, variance, centred, prior_sd_scale)
    scale = jnp.sqrt(variance)
    moved = from_families(Families(location, jnp.log(scale), (centred - location) / scale))
    return moved, log_prior(moved) - log_prior(params)


def transported(z, scale, new_scale, b, h) -> tuple[jax.Array, jax.Array]:
    """z (G,) carried from ``scale`` to ``new_scale`` through the Gaussian approximation of
    z | scale (linearised log-likelihood: gradient ``b``, curvature ``h`` per group), and the
    log-Jacobian of that map. From ``new_scale`` back to ``scale`` it is the inverse map."""
    precision, new_precision = 1 + jnp.square(scale) * h, 1 + jnp.square(new_scale) * h
    new_z = new_scale * b / new_precision + jnp.sqrt(precision / new_precision) * (z - scale * b / precision)
    return new_z, 0.5 * jnp.sum(jnp.log(precision) - jnp.log(new_precision))


class _RowBlock(NamedTuple):
    """Rows of one array shape, for the transport's passes: the segment layout's (N,), or a
    blocked layout's block (width, pieces) (``hblogit.layout``)."""

    covariates: jax.Array  # (K, *shape): each covariate's rows, contiguous
    sign: jax.Array  # shape: 1 - 2 y, 0 on padding rows
    owner: jax.Array  # the group of each row (N,), or of each piece (pieces,)


def _row_blocks(data: Dataset | BlockedDataset) -> tuple[_RowBlock, ...]:
    if isinstance(data, BlockedDataset):
        return tuple(_RowBlock(block.X, block.sign, block.owner) for block in data.blocks)
    # A covariate's rows as one contiguous array: a column of the row-major X would be read
    # with a stride of K, once per family and pass.
    return (_RowBlock(data.X.T, _outcome_sign(data), data.group_idx),)


def _family_covariate(block: _RowBlock, k: jax.Array) -> jax.Array:
    """Family k's covariate per row: 1 for the intercepts (k = 0), else covariate k - 1."""
    if block.covariates.shape[0] == 0:  # no covariates: the intercepts are the only family
        return jnp.ones_like(block.sign)
    return jnp.where(k == 0, 1, jax.lax.dynamic_index_in_dim(block.covariates, jnp.maximum(k - 1, 0), keepdims=False))


def _sums_by_group(per_row: tuple[jax.Array, ...], data: Dataset | BlockedDataset) -> jax.Array:
    """Per-group sums of per-row terms (one array per ``_RowBlock``, a trailing axis of
    terms): a segment sum, or sums over the blocks' widths gathered to groups."""
    if isinstance(data, BlockedDataset):
        return _pieces_to_groups(jnp.concatenate([jnp.sum(terms, axis=0) for terms in per_row]), data)
    return jax.ops.segment_sum(per_row[0], **_segments(data))


def _rows_eta(params: Params, data: Dataset | BlockedDataset) -> tuple[jax.Array, ...]:
    """The linear predictor of every row, one array per ``_RowBlock``."""
    if isinstance(data, BlockedDataset):
        intercepts, slopes = _group_coefficients(params, data.blocks[0].X.dtype)
        return tuple(_block_eta(block, intercepts, slopes) for block in data.blocks)
    return (_linear_predictor(params, data),)


def transport_scales(
    key, params: Params, data: Dataset | BlockedDataset, log_scale_sds: jax.Array, *, passes: int = 1
) -> tuple[Params, jax.Array]:
    """A Metropolis update of every family's scale, in random order, that carries its z's;
    ``passes`` times over, each pass in a new random order.

    For family k, with the other coordinates fixed, linearise each group's log-likelihood in
    its effect c_g at c_g = location (z_g = 0): gradient b_g and curvature h_g >= 0 from its
    rows. Under that quadratic, z_g | scale s is normal with precision P_g(s) = 1 + s^2 h_g
    and mean m_g(s) = s b_g / P_g(s). A proposed s' = s exp(delta), delta ~ N(0, tau^2),
    takes every z_g to m_g(s') + sqrt(P_g(s) / P_g(s')) (z_g - m_g(s)): exact for a Gaussian
    likelihood, so the scale moves as its marginal would, not as its narrow conditional
    given the z's. b and h do not depend on the family's own scale or z's, so the map's
    inverse is the same map with -delta; its log-Jacobian is sum_g log sqrt(P_g(s) /
    P_g(s')), and the exact log-density (the likelihood through the rows' linear predictor,
    kept up to date across families) decides acceptance.

    ``log_scale_sds`` (K + 1,): the posterior sd of each log scale (intercepts first), which
    sets tau = ``TRANSPORT_STEP`` sds. Costs a few passes over the rows per family and pass,
    no gradient, in the data's layout: in the blocked one (``hblogit.layout``) they are
    elementwise work over dense blocks, with no gather or scatter of N rows. Independent
    random orders make the sequence of updates as likely forwards as backwards, so the
    whole is reversible, for any number of passes.
    """
    integer(passes, "passes")
    f = families(params)
    dtype = f.z.dtype
    num_families = f.z.shape[1]
    _, prior_sd_scale = _prior_sds(num_families - 1, dtype)
    blocks = _row_blocks(data)
    row_dtype = blocks[0].covariates.dtype  # per-row work and sums by group in the data's dtype, as the model

    def log_likelihood(eta):
        return sum(jnp.sum(_row_terms(block.sign, eta_block)[0], dtype=dtype) for block, eta_block in zip(blocks, eta))

    def update_family(carry, inputs):
        z, log_scale, eta, log_lik, change = carry
        k, key = inputs
        key_delta, key_accept = jax.random.split(key)
        x = tuple(_family_covariate(block, k) for block in blocks)
        scale, z_k = jnp.exp(log_scale[k]), z[:, k]

        def to_rows(per_group):  # x times a per-group value, per row
            per_group = per_group.astype(row_dtype)
            return tuple(x_block * per_group.at[block.owner].get(**_SORTED_GATHER) for block, x_block in zip(blocks, x))

        eta_without = jax.tree.map(jnp.subtract, eta, to_rows(scale * z_k))
        terms = []
        for block, x_block, eta_block in zip(blocks, x, eta_without):
            _, residual, weight = _row_terms(block.sign, eta_block)
            terms.append(jnp.stack([residual * x_block, weight * jnp.square(x_block)], axis=-1))
        b, h = _sums_by_group(tuple(terms), data).astype(dtype).T
        delta = log_scale_sds[k] * TRANSPORT_STEP * jax.random.normal(key_delta, (), dtype)
        new_scale = scale * jnp.exp(delta)
        new_z_k, log_jacobian = transported(z_k, scale, new_scale, b, h)
        new_eta = jax.tree.map(jnp.add, eta_without, to_rows(new_scale * new_z_k))
        new_log_lik = log_likelihood(new_eta)
        log_density_change = (
            new_log_lik
            - log_lik
            - 0.5 * jnp.sum(jnp.square(new_z_k) - jnp.square(z_k))
            - 0.5 * (jnp.square(new_scale) - jnp.square(scale)) / jnp.square(prior_sd_scale[k])
            + delta  # the half-normal prior of the scale on the log scale, Jacobian included
        )
        accept = jnp.log(jax.random.uniform(key_accept, (), dtype)) < log_density_change + log_jacobian
        z = z.at[:, k].set(jnp.where(accept, new_z_k, z_k))
        log_scale = jnp.where(accept, log_scale.at[k].add(delta), log_scale)
        eta = jax.tree.map(lambda new, old: jnp.where(accept, new, old), new_eta, eta)
        log_lik = jnp.where(accept, new_log_lik, log_lik)
        return (z, log_scale, eta, log_lik, change + jnp.where(accept, log_density_change, 0)), None

    key_order, key_moves = jax.random.split(key)
    orders = jax.vmap(lambda k: jax.random.permutation(k, num_families))(jax.random.split(key_order, passes))
    order = orders.reshape(-1)
    eta = _rows_eta(params, data)
    start = (f.z, f.log_scale, eta, log_likelihood(eta), jnp.zeros((), dtype))
    (z, log_scale, _, _, change), _ = jax.lax.scan(update_family, start, (order, jax.random.split(key_moves, order.shape[0])))
    return from_families(Families(f.location, log_scale, z)), change


def _with_effects(f: Families, z: jax.Array) -> Params:
    return from_families(Families(f.location, f.log_scale, z))


def newton_precision(f: Families, z: jax.Array, data: Dataset | BlockedDataset) -> tuple[jax.Array, jax.Array]:
    """At ``z``: the gradient of every group's log target, log p(y_g | z_g, globals) + log
    N(z_g; 0, I), and its precision I + S H_g S (S the scales, H_g the group's information
    in its coefficients): a Newton step is z + precision^-1 gradient."""
    scale = jnp.exp(f.log_scale)
    terms = group_terms(_with_effects(f, z), data)
    precision = jnp.eye(z.shape[1], dtype=z.dtype) + scale[:, None] * terms.information * scale
    return scale * terms.gradient - z, precision


def _newton_system(f: Families, z: jax.Array, data: Dataset | BlockedDataset, linalg: str) -> tuple[jax.Array, jax.Array]:
    """``newton_precision``'s gradient, and the lower Cholesky factor L of its precision."""
    gradient, precision = newton_precision(f, z, data)
    return gradient, small_linalg.cholesky(precision, linalg)


def refresh_effects(
    key, params: Params, data: Dataset | BlockedDataset, newton_steps: int = 1, linalg: str = "library"
) -> tuple[Params, jax.Array]:
    """Every group's z_g (intercept and slopes together) by an independence Metropolis step
    from the Laplace approximation of z_g | the globals; returns (point, change of log p).
    The globals stay.

    The approximation is N(m_g, (L L^T)^-1) after ``newton_steps`` Newton steps from z = 0
    (``_newton_system``), so it depends on the globals alone. Given the globals the groups
    are independent, so the G accept/reject decisions are G exact Metropolis-Hastings steps
    at once, each accepting with the ratio of the group's target (its likelihood times
    N(0, I)) to the proposal. Costs ``newton_steps`` + 2 passes over the rows (the last two
    for the likelihood alone) and a (K + 1)-square Cholesky factorisation per group and step,
    computed as ``linalg`` says (``hblogit.small_linalg``).
    """
    integer(newton_steps, "newton_steps")

    def solve(cholesky, v, transpose):  # per group, v of shape (G, K + 1, columns)
        return small_linalg.solve_lower(cholesky, v, transpose=transpose, linalg=linalg)

    f = families(params)
    z = jnp.zeros_like(f.z)
    for _ in range(newton_steps - 1):
        gradient, cholesky = _newton_system(f, z, data, linalg)
        z = z + solve(cholesky, solve(cholesky, gradient[..., None], False), True)[..., 0]
    # The last step and the draw share their solves: mean = z + L^-T u and proposal =
    # z + L^-T (u + normal), with u = L^-1 gradient (on a CPU a batched triangular solve
    # costs about what a Cholesky factorisation does, whatever the columns).
    gradient, cholesky = _newton_system(f, z, data, linalg)
    half = solve(cholesky, gradient[..., None], False)
    key_normal, key_accept = jax.random.split(key)
    normal = jax.random.normal(key_normal, f.z.shape, f.z.dtype)
    both = z[..., None] + solve(cholesky, jnp.concatenate([half, half + normal[..., None]], axis=-1), True)
    mean, proposal = both[..., 0], both[..., 1]

    def log_target(z):  # per group
        return group_terms(_with_effects(f, z), data).log_likelihood - 0.5 * jnp.sum(jnp.square(z), axis=1)

    # log proposal densities, up to a constant shared by both points: -|L^T (z - m)|^2 / 2
    log_proposal_current = -0.5 * jnp.sum(jnp.square(jnp.einsum("gji,gj->gi", cholesky, f.z - mean)), axis=1)
    log_proposal_proposed = -0.5 * jnp.sum(jnp.square(normal), axis=1)
    current_target, proposal_target = log_target(f.z), log_target(proposal)
    log_ratio = proposal_target - current_target - log_proposal_proposed + log_proposal_current
    accept = jnp.log(jax.random.uniform(key_accept, log_ratio.shape, log_ratio.dtype)) < log_ratio
    z = jnp.where(accept[:, None], proposal, f.z)
    return _with_effects(f, z), jnp.sum(jnp.where(accept, proposal_target - current_target, 0))
