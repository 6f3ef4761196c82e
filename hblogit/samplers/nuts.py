"""NUTS (BlackJAX's multinomial, iterative NUTS) after Stan's windowed warm-up."""

from __future__ import annotations

from typing import NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from blackjax.mcmc.hmc import HMCState

from . import window
from .base import StepStats, chain_keys, register


class WarmupState(NamedTuple):
    chain: HMCState
    adaptation: window.WindowState
    schedule: jax.Array  # (num_warmup, 2), shared by all chains


class TunedState(NamedTuple):
    chain: HMCState
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


@register("nuts")
class NUTS(eqx.Module):
    """NUTS with a diagonal mass matrix, adapted per chain with Stan's schedule.

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
    target_acceptance_rate: float = eqx.field(static=True, default=0.8)
    initial_step_size: float = eqx.field(static=True, default=1.0)
    name: str = eqx.field(static=True, default="nuts")

    def _kernel(self, key, chain, logdensity, step_size, inverse_mass_matrix):
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

    def init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        chains = jax.vmap(blackjax.nuts.init, in_axes=(0, None))(positions, logdensity)
        init, _, _ = window.window_adaptation(self.target_acceptance_rate)
        step_size = jnp.asarray(self.initial_step_size, chains.logdensity.dtype)
        adaptation = jax.vmap(init, in_axes=(0, None))(inverse_mass_matrix, step_size)
        return WarmupState(chains, adaptation, jnp.asarray(window.schedule(num_warmup)))

    def warmup_step(self, key, state, logdensity, step_index):
        _, update, _ = window.window_adaptation(self.target_acceptance_rate)
        stage, window_end = state.schedule[step_index]

        def one_chain(key, chain, adaptation):
            chain, stats = self._kernel(key, chain, logdensity, adaptation.step_size, adaptation.inverse_mass_matrix)
            adaptation = update(adaptation, stage, window_end, chain.position, stats.acceptance_rate)
            return chain, adaptation, stats

        keys = chain_keys(key, state.chain.logdensity.shape[0])
        chain, adaptation, stats = jax.vmap(one_chain)(keys, state.chain, state.adaptation)
        return WarmupState(chain, adaptation, state.schedule), stats

    def finish_warmup(self, state):
        _, _, final = window.window_adaptation(self.target_acceptance_rate)
        step_size, inverse_mass_matrix = jax.vmap(final)(state.adaptation)
        return TunedState(state.chain, step_size, inverse_mass_matrix)

    def step(self, key, state, logdensity):
        keys = chain_keys(key, state.chain.logdensity.shape[0])
        chain, stats = jax.vmap(
            lambda k, c, s, m: self._kernel(k, c, logdensity, s, m)
        )(keys, state.chain, state.step_size, state.inverse_mass_matrix)
        return TunedState(chain, state.step_size, state.inverse_mass_matrix), stats

    def position(self, state):
        return state.chain.position
