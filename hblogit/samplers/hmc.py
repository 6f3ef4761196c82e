"""Static HMC: a fixed number of leapfrog steps per draw, after Stan's windowed warm-up."""

from __future__ import annotations

import blackjax
import equinox as eqx
import jax.numpy as jnp

from .. import checks
from .base import neutral_stats, register
from .window import WindowAdapted


@register("hmc")
class HMC(WindowAdapted):
    """HMC with a static trajectory (``num_integration_steps`` leapfrog steps every draw) and
    a diagonal mass matrix, adapted per chain with Stan's schedule (as ``nuts``).

    When: every draw costs the same, so chains never wait for the longest tree (on a GPU,
    vmapped NUTS runs every chain as long as the deepest). The price is choosing the length:
    too short and it random-walks, too long and it wastes gradients or resonates. Run nuts
    first and set ``num_integration_steps`` near its typical ``n_steps``.

    Options: ``num_integration_steps`` (default 16, about what nuts uses on the small
    problems; at the post's 2.1M parameters the adapted step is smaller, so raise it to
    nuts' median ``n_steps`` there, typically 31-63), ``target_acceptance_rate`` (default
    0.8), ``initial_step_size`` (default 1.0), ``chain_method`` (``"auto"`` is ``"vmap"``:
    a fixed-length trajectory has no while loop to copy carries through, and vmapped chains
    share their reads of the data; ``"sequential"`` also works), ``interweave``,
    ``transport`` and ``transport_passes`` (the scale moves: see ``WindowAdapted``).
    """

    num_integration_steps: int = eqx.field(static=True, default=16)
    name: str = eqx.field(static=True, default="hmc")

    def __check_init__(self):
        checks.integer(self.num_integration_steps, "num_integration_steps")

    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix):
        kernel = blackjax.hmc.build_kernel()
        chain, info = kernel(key, chain, logdensity, step_size, inverse_mass_matrix, self.num_integration_steps)
        stats = neutral_stats(
            chain.logdensity,
            info.acceptance_rate,
            info.is_divergent,
            self.num_integration_steps,
            jnp.asarray(step_size, chain.logdensity.dtype),
            energy=info.energy,
        )
        return chain, stats
