"""``TunedAtOnce``: the protocol for samplers whose BlackJAX tuner runs as one program.

BlackJAX's MCLMC, adjusted-MCLMC and ChEES tuners (and ``meads_warmup``, hblogit's
corrected copy of BlackJAX's MEADS one) are each one ``lax.scan`` over the whole warm-up,
with state that is not exposed step by step. Rather than copy them, the
first ``warmup_step`` runs the tuner for all ``num_warmup`` steps and reports every gradient
it spent as that step's ``n_steps``; the other warm-up steps are no-ops that spend none.
The cost: the progress bar stands still during warm-up. An incremental version would
need the tuners' per-step updates, which BlackJAX keeps inside their scans.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .base import StepStats, neutral_stats, warmup_length_marker


class WarmupState(NamedTuple):
    chain: Any  # BlackJAX chain states, batched over chains
    params: Any  # the tuned parameters (before tuning: the starting guesses, same shapes)
    length: jax.Array  # warmup_length_marker(num_warmup)


class TunedState(NamedTuple):
    chain: Any
    params: Any


def _same_types(new, old):
    """``new`` cast leaf by leaf to ``old``'s dtypes, so both branches of a cond agree."""
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


def flatten(positions):
    """(chains, d) flat positions, and a template to undo it: the positions with zero
    chains, which keeps their structure and shapes in a pytree of empty arrays. For
    BlackJAX ensemble tuners whose cross-chain statistics assume (chains, dim) leaves."""
    return jax.vmap(lambda p: ravel_pytree(p)[0])(positions), jax.tree.map(lambda p: p[:0], positions)


def _unravel(template):
    return ravel_pytree(jax.tree.map(lambda t: jnp.zeros(t.shape[1:], t.dtype), template))[1]


def unflatten(flat, template):
    return jax.vmap(_unravel(template))(flat)


def flat_logdensity(logdensity, template):
    unravel = _unravel(template)
    return lambda flat: logdensity(unravel(flat))


class TunedAtOnce(eqx.Module):
    """Subclasses give ``_init(positions, logdensity, num_warmup, inverse_mass_matrix) ->
    (chain, params)``, ``_tune(key, chain, params, logdensity, num_warmup) -> (chain,
    params, n_steps per chain)``, ``_transition(key, chain, params, logdensity) -> (chain,
    StepStats)``; ``params`` carries the per-chain ``step_size`` the statistics report."""

    @abc.abstractmethod
    def _init(self, positions, logdensity, num_warmup, inverse_mass_matrix) -> tuple[Any, Any]: ...

    @abc.abstractmethod
    def _tune(self, key, chain, params, logdensity, num_warmup) -> tuple[Any, Any, jax.Array]: ...

    @abc.abstractmethod
    def _transition(self, key, chain, params, logdensity) -> tuple[Any, StepStats]: ...

    def _seeded(self, key, chain):
        """``chain`` with what ``_init`` drew from a fixed key (the protocol's ``init`` gets
        none: a momentum, a trajectory-length stream) drawn again from the run's ``key``, so
        that runs with different seeds do not share it. Nothing by default."""
        return chain

    def init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        chain, params = self._init(positions, logdensity, num_warmup, inverse_mass_matrix)
        return WarmupState(chain, params, warmup_length_marker(num_warmup))

    def warmup_step(self, key, state, logdensity, step_index):
        num_warmup = state.length.shape[0]
        idle = jnp.zeros(state.chain.logdensity.shape, jnp.int32)

        def tune(_):
            key_seed, key_tune = jax.random.split(key)
            chain = self._seeded(key_seed, state.chain)
            chain, params, n_steps = self._tune(key_tune, chain, state.params, logdensity, num_warmup)
            return _same_types((chain, params, n_steps), (state.chain, state.params, idle))

        chain, params, n_steps = jax.lax.cond(
            step_index == 0, tune, lambda _: (state.chain, state.params, idle), None
        )
        lp = chain.logdensity
        stats = neutral_stats(lp, jnp.full_like(lp, jnp.nan), jnp.zeros(lp.shape, bool), n_steps, params.step_size)
        return WarmupState(chain, params, state.length), stats

    def finish_warmup(self, state):
        return TunedState(state.chain, state.params)

    def step(self, key, state, logdensity):
        chain, stats = self._transition(key, state.chain, state.params, logdensity)
        return TunedState(chain, state.params), stats

    def position(self, state):
        return state.chain.position


class FlatTunedAtOnce(TunedAtOnce):
    """A TunedAtOnce whose chains move as flat vectors (``flatten``), with the Params
    ``template`` kept in ``params`` to give positions back their structure."""

    def position(self, state):
        return unflatten(state.chain.position, state.params.template)
