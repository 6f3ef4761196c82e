"""A prototype sampler, ``gibbs-prototype``, measured in experiments/RESULTS.md ("Fewer
gradients a draw"): NUTS over the locations (alpha, beta) alone, given z and the scales, then
the scale moves with a refresh of every z in the middle:

    interweave, transport, refresh_effects, transport, interweave

``refresh_effects`` draws each group's z_g (its intercept's and slopes' z together) by an
independence Metropolis step from the Laplace approximation of z_g | the globals, data:
Newton steps from z_g = 0 on the group's rows (a (K + 1)-square Cholesky per group). The
proposal depends on the globals only, and given them the groups are independent, so the G
accept/reject decisions are G exact steps at once. NUTS then needs no long trajectories
through the 2.1M group coordinates, whose step size falls as d^(-1/4): its tree is over K + 1
coordinates. Run like experiments/bench_samplers.py, whose options it takes:

    python experiments/gibbs_prototype.py --problem simulate --num-obs 50000 --num-groups 5000 \\
        --num-covariates 20 --chains 4 --warmup 500 --draws 500 --samplers gibbs-prototype:transport_passes=2

The gradient columns count NUTS' gradients and the state's refresh (two a draw), not the
refresh's Newton passes over the rows: compare wall times.
"""

from __future__ import annotations

import sys
from pathlib import Path

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from hblogit.model import Params, _linear_predictor, _outcome_sign
from hblogit.moves import Families, check_passes, families, from_families
from hblogit.samplers.base import StepStats, register
from hblogit.samplers.nuts import NUTS


def _group_sums(data, per_row):
    return jax.ops.segment_sum(per_row, data.group_idx, num_segments=data.num_groups, indices_are_sorted=True)


def laplace(f: Families, data, covariates, newton_steps: int):
    """Mean (G, K + 1) and lower Cholesky factor of the precision (G, K + 1, K + 1) of
    each z_g | globals, from ``newton_steps`` Newton steps started at z = 0."""
    dtype = f.z.dtype
    scale = jnp.exp(f.log_scale)
    z = jnp.zeros_like(f.z)
    for _ in range(newton_steps):
        p = jax.nn.sigmoid(_eta(f, z, data))
        gradient = scale * _group_sums(data, ((data.y - p)[:, None] * covariates).astype(dtype)) - z
        curvature = _group_sums(data, (p * (1 - p))[:, None, None] * covariates[:, :, None] * covariates[:, None, :])
        precision = jnp.eye(z.shape[1], dtype=dtype) + scale[:, None] * curvature.astype(dtype) * scale[None, :]
        cholesky = jnp.linalg.cholesky(precision)
        z = z + jax.scipy.linalg.cho_solve((cholesky, True), gradient[..., None])[..., 0]
    return z, cholesky


def _eta(f: Families, z, data):
    """The rows' linear predictor with the effects z in place of f's."""
    return _linear_predictor(from_families(Families(f.location, f.log_scale, z)), data)


def _log_target_per_group(f: Families, z, data):
    """log p(y_g | z_g, globals) + log N(z_g; 0, I), per group, summed in the parameters' dtype."""
    per_row = -jax.nn.softplus(_outcome_sign(data) * _eta(f, z, data))
    return _group_sums(data, per_row.astype(z.dtype)) - 0.5 * jnp.sum(jnp.square(z), axis=1)


def refresh_effects(key, params: Params, data, newton_steps: int = 1) -> tuple[Params, jax.Array]:
    """Every z_g by an independence Metropolis step from its Laplace normal; returns (point,
    change of the model's log-density). The globals are left as they are."""
    check_passes(newton_steps, "newton_steps")
    f = families(params)
    covariates = jnp.concatenate([jnp.ones((data.num_obs, 1), data.X.dtype), data.X], axis=1)
    mean, cholesky = laplace(f, data, covariates, newton_steps)
    key_normal, key_accept = jax.random.split(key)
    normal = jax.random.normal(key_normal, f.z.shape, f.z.dtype)
    proposal = mean + jax.scipy.linalg.solve_triangular(cholesky, normal[..., None], lower=True, trans="T")[..., 0]

    def log_proposal(z):  # up to a constant shared by both points
        return -0.5 * jnp.sum(jnp.square(jnp.einsum("gji,gj->gi", cholesky, z - mean)), axis=1)

    current_target = _log_target_per_group(f, f.z, data)
    proposal_target = _log_target_per_group(f, proposal, data)
    log_ratio = proposal_target - current_target - log_proposal(proposal) + log_proposal(f.z)
    accept = jnp.log(jax.random.uniform(key_accept, log_ratio.shape, log_ratio.dtype)) < log_ratio
    z = jnp.where(accept[:, None], proposal, f.z)
    change = jnp.sum(jnp.where(accept, proposal_target - current_target, 0))
    return from_families(Families(f.location, f.log_scale, z)), change


class GibbsPrototype(NUTS):
    """NUTS over (alpha, beta) given the rest, then the moves with ``refresh_effects`` in the
    middle. Options as nuts', plus ``newton_steps`` (default 1)."""

    newton_steps: int = eqx.field(static=True, default=1)
    name: str = eqx.field(static=True, default="gibbs-prototype")

    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix):
        position = chain.position
        variances = ravel_pytree(position)[1](inverse_mass_matrix)

        def conditional(locations):
            return logdensity(position._replace(alpha=locations[0], beta=locations[1]))

        state = blackjax.hmc.init((position.alpha, position.beta), conditional)
        state, info = blackjax.nuts.build_kernel()(
            key, state, conditional, step_size, jnp.concatenate([variances.alpha[None], variances.beta]), self.max_num_doublings
        )
        alpha, beta = state.position
        chain = blackjax.hmc.init(position._replace(alpha=alpha, beta=beta), logdensity)
        stats = StepStats(
            lp=chain.logdensity,
            acceptance_rate=info.acceptance_rate,
            diverging=info.is_divergent,
            energy=info.energy,
            n_steps=info.num_integration_steps.astype(jnp.int32) + 2,
            step_size=jnp.asarray(step_size, chain.logdensity.dtype),
            tree_depth=info.num_trajectory_expansions.astype(jnp.int32),
            reached_max_treedepth=info.num_trajectory_expansions >= self.max_num_doublings,
        )
        return chain, stats

    def _scale_moves(self, position, logdensity, inverse_mass_matrix):
        moves = super()._scale_moves(position, logdensity, inverse_mass_matrix)
        first_half = moves[: len(moves) // 2 + 1]

        def refresh(key, p):
            return refresh_effects(key, p, logdensity.dataset, self.newton_steps)

        return first_half + [refresh] + first_half[::-1]


if __name__ == "__main__":
    register("gibbs-prototype")(GibbsPrototype)  # here, so that importing this file registers nothing
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_samplers

    sys.exit(bench_samplers.main(sys.argv[1:]))
