"""NUTS (BlackJAX's multinomial, iterative NUTS) after Stan's windowed warm-up."""

from __future__ import annotations

import blackjax
import equinox as eqx
import jax.numpy as jnp

from .base import StepStats, register
from .window import WindowAdapted


@register("nuts")
class NUTS(WindowAdapted):
    """NUTS with a diagonal mass matrix, adapted per chain with Stan's schedule.

    The default, and the yardstick for the others: no trajectory length to choose, robust on
    the funnel-like geometry of the group effects. Same defaults at any size.

    Options: ``max_num_doublings`` (tree depth limit, default 10), ``target_acceptance_rate``
    (default 0.8), ``initial_step_size`` (default 1.0, as BlackJAX).

    On sharded Params (``hblogit.sharding``) it runs unchanged and gives the single-device
    draws to rounding, and the state it holds keeps the group sharding: position and
    gradient split by group, the flat mass matrix split in D equal pieces. But it does not
    keep the sharding *inside* a trajectory: BlackJAX's diagonal metric ravels the momentum
    (``ravel_pytree``, a concatenate) for the kinetic energy and the U-turn check, and its
    mass-matrix adaptation ravels the position, so XLA all-gathers the full z vectors to
    every device and reshards them with collective permutes in every leapfrog step
    (measured in the compiled warm-up program on four CPU devices). The result is correct,
    but traffic and temporary memory per device are O(d), not O(d / D). Keeping it would take
    a metric and a Welford over pytrees (BlackJAX's ``nuts.build_kernel`` accepts any
    ``metrics.Metric``), with the mass matrix carried as a Params rather than flat.
    """

    max_num_doublings: int = eqx.field(static=True, default=10)
    name: str = eqx.field(static=True, default="nuts")

    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix):
        kernel = blackjax.nuts.build_kernel()
        chain, info = kernel(key, chain, logdensity, step_size, inverse_mass_matrix, self.max_num_doublings)
        stats = StepStats(
            lp=chain.logdensity,
            acceptance_rate=info.acceptance_rate,
            diverging=info.is_divergent,
            energy=info.energy,
            n_steps=info.num_integration_steps.astype(jnp.int32),
            step_size=jnp.asarray(step_size, chain.logdensity.dtype),
            tree_depth=info.num_trajectory_expansions.astype(jnp.int32),
            reached_max_treedepth=info.num_trajectory_expansions >= self.max_num_doublings,
        )
        return chain, stats
