"""Samplers defined outside the package, as a researcher would write them: one move per chain
and no warm-up tuning. They exercise the sampler protocol and the runner's guards."""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import hblogit
from hblogit.samplers.base import neutral_stats


class ChainsState(NamedTuple):
    position: hblogit.Params  # batched over chains
    lp: jax.Array


class Untuned(eqx.Module):
    """The protocol around ``_move(key, position, lp, logdensity) -> (position, lp, stats)``,
    one chain's step; warm-up steps are ordinary steps."""

    @abc.abstractmethod
    def _move(self, key, position, lp, logdensity): ...

    def init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        return ChainsState(positions, jax.vmap(logdensity)(positions))

    def step(self, key, state, logdensity):
        keys = jax.random.split(key, state.lp.shape[0])
        position, lp, stats = jax.vmap(lambda k, p, l: self._move(k, p, l, logdensity))(keys, state.position, state.lp)
        return ChainsState(position, lp), stats

    def warmup_step(self, key, state, logdensity, step_index):
        return self.step(key, state, logdensity)

    def finish_warmup(self, state):
        return state

    def position(self, state):
        return state.position


class RandomWalk(Untuned):
    """Random-walk Metropolis with isotropic Gaussian proposals; no gradients."""

    scale: float = eqx.field(static=True, default=0.05)
    name: str = eqx.field(static=True, default="toy")

    def _move(self, key, position, lp, logdensity):
        flat, unravel = ravel_pytree(position)
        key_proposal, key_accept = jax.random.split(key)
        proposal = unravel(flat + self.scale * jax.random.normal(key_proposal, flat.shape, flat.dtype))
        proposal_lp = logdensity(proposal)
        log_ratio = jnp.nan_to_num(proposal_lp - lp, nan=-jnp.inf)
        accept = jnp.log(jax.random.uniform(key_accept)) < log_ratio
        position = jax.tree.map(lambda new, old: jnp.where(accept, new, old), proposal, position)
        lp = jnp.where(accept, proposal_lp, lp)
        stats = neutral_stats(lp, jnp.minimum(1.0, jnp.exp(log_ratio)), jnp.asarray(False), 0, jnp.asarray(self.scale, lp.dtype))
        return position, lp, stats


class UnadjustedLangevin(Untuned):
    """Unadjusted Langevin steps with no guard against a NaN: the runner must catch a chain
    that leaves the region where the density is finite."""

    step_size: float = eqx.field(static=True, default=0.01)
    name: str = eqx.field(static=True, default="langevin")

    def _move(self, key, position, lp, logdensity):
        flat, unravel = ravel_pytree(position)
        grad = ravel_pytree(jax.grad(logdensity)(position))[0]
        noise = jax.random.normal(key, flat.shape, flat.dtype)
        position = unravel(flat + self.step_size * grad + jnp.sqrt(2 * self.step_size) * noise)
        lp = logdensity(position)
        return position, lp, neutral_stats(lp, jnp.ones_like(lp), jnp.asarray(False), 1, jnp.asarray(self.step_size, lp.dtype))
