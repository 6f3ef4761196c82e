"""NUTS (BlackJAX's multinomial, iterative NUTS) after Stan's windowed warm-up."""

from __future__ import annotations

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp

from .. import checks
from .base import StepStats, dimension, register
from .window import WindowAdapted


# Between the 210k parameters where vmap was measured faster on an H200 and the 2.1M where
# sequential was (see NUTS' docstring).
SEQUENTIAL_MIN_PARAMS_GPU = 1_000_000


@register("nuts")
class NUTS(WindowAdapted):
    """NUTS with a diagonal mass matrix, adapted per chain with Stan's schedule.

    The default, and the yardstick for the others: no trajectory length to choose, robust on
    the funnel-like geometry of the group effects. Same defaults at any size.

    Options: ``max_num_doublings`` (tree depth limit, default 10), ``target_acceptance_rate``
    (default 0.8), ``initial_step_size`` (default 1.0, as BlackJAX), ``chain_method``
    (``"auto"``, ``"vmap"`` or ``"sequential"``), ``interweave``, ``transport`` and
    ``transport_passes`` (the scale moves: see ``WindowAdapted``).

    Chains: BlackJAX's iterative NUTS carries its U-turn checkpoints, two (max_num_doublings,
    d) arrays, through while loops. Vmapped, each loop iteration copies them for every chain
    through a select, and every chain runs as long as the deepest tree. ``"auto"`` therefore
    runs the chains one after the other on a CPU, where that was measured faster at every
    size tried (4 chains, one NUTS gradient: 0.60 against 0.72 ms at 2.5k parameters, 146
    against 312 ms at the post's 2.1M; experiments/RESULTS.md), and on a GPU from
    ``SEQUENTIAL_MIN_PARAMS_GPU`` parameters. On an H200, 4 chains, per chain and NUTS
    gradient: 0.41 ms sequential against 0.55 vmapped at 2.1M parameters, but 0.20 against
    0.11 at 210k and 0.17 against 0.03 at 2.5k, where a GPU is bound by kernel launches and
    vmap launches once for all chains.

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

    def __check_init__(self):
        checks.integer(self.max_num_doublings, "max_num_doublings")

    def _auto_sequential(self, position) -> bool:
        if jax.default_backend() == "cpu":
            return True
        return dimension(position) >= SEQUENTIAL_MIN_PARAMS_GPU

    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix):
        kernel = blackjax.nuts.build_kernel()
        chain, info = kernel(key, chain, logdensity, step_size, inverse_mass_matrix, self.max_num_doublings)
        return chain, self._stats(chain.logdensity, info, step_size)

    def _stats(self, lp, info, step_size) -> StepStats:
        """The step's statistics from BlackJAX's NUTS info; ``lp`` the new state's density."""
        return StepStats(
            lp=lp,
            acceptance_rate=info.acceptance_rate,
            diverging=info.is_divergent,
            energy=info.energy,
            n_steps=info.num_integration_steps.astype(jnp.int32),
            step_size=jnp.asarray(step_size, lp.dtype),
            tree_depth=info.num_trajectory_expansions.astype(jnp.int32),
            reached_max_treedepth=info.num_trajectory_expansions >= self.max_num_doublings,
        )
