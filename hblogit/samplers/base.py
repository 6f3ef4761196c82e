"""The sampler protocol, the per-step statistics every sampler reports, and the registry.

A sampler works on a batch of chains at once (the leading axis of every leaf), so that
ensemble methods that adapt across chains fit the same protocol as per-chain ones; a
per-chain BlackJAX kernel is lifted with ``jax.vmap``. Like BlackJAX, a sampler is pure
functions over NamedTuple states:

    state = sampler.init(positions, logdensity, num_warmup, inverse_mass_matrix)  # warm-up state
    state, stats = sampler.warmup_step(key, state, logdensity, t)    # t: warm-up step index
    state = sampler.finish_warmup(state)                             # tuned sampling state
    state, stats = sampler.step(key, state, logdensity)
    positions = sampler.position(state)

``inverse_mass_matrix`` (chains, d) is the runner's first guess at the posterior variances
(flattened as ``jax.flatten_util.ravel_pytree`` orders a position); samplers with a
mass matrix start from it, others may ignore it. ``logdensity`` is passed to every call (it is a pytree holding the data), so one compiled
program serves any dataset of the same shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp


class StepStats(NamedTuple):
    """What every sampler reports for every step and chain (ArviZ sample_stats names).

    Samplers without a notion fill it with a neutral value: ``tree_depth`` 0 and
    ``reached_max_treedepth`` False outside NUTS, ``energy`` NaN where there is no
    Hamiltonian.
    """

    lp: jax.Array
    acceptance_rate: jax.Array
    diverging: jax.Array
    energy: jax.Array
    n_steps: jax.Array  # gradient evaluations spent by this step
    step_size: jax.Array
    tree_depth: jax.Array
    reached_max_treedepth: jax.Array


class Sampler(Protocol):
    name: str

    def init(self, positions, logdensity: Callable, num_warmup: int, inverse_mass_matrix) -> Any: ...

    def warmup_step(self, key, state, logdensity: Callable, step_index) -> tuple[Any, StepStats]: ...

    def finish_warmup(self, state) -> Any: ...

    def step(self, key, state, logdensity: Callable) -> tuple[Any, StepStats]: ...

    def position(self, state) -> Any: ...


SAMPLERS: dict[str, Callable[..., Sampler]] = {}


def register(name: str):
    """Class decorator: ``@register("nuts")`` makes ``get_sampler("nuts", **options)`` build it."""

    def decorate(factory):
        SAMPLERS[name] = factory
        return factory

    return decorate


def get_sampler(name: str, **options) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; registered: {', '.join(sorted(SAMPLERS))}")
    try:
        return SAMPLERS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad option for sampler {name!r}: {error}") from None


def chain_keys(key, num_chains: int):
    return jax.random.split(key, num_chains)


CHAIN_METHODS = ("auto", "vmap", "sequential")


def check_chain_method(chain_method: str) -> None:
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {', '.join(map(repr, CHAIN_METHODS))}, got {chain_method!r}")


def each_chain(fn, key, *chains, sequential: bool = False):
    """``fn(chain_key, *chain_args)`` for every chain of ``chains`` (the leading axis of every
    leaf), each chain with its own key split from ``key``; results stacked.

    By default ``jax.vmap`` runs the chains in lock step: one program for all chains, data
    read once per step for all of them, but a loop with a data-dependent trip count (NUTS'
    tree building) runs until every chain is done, and every carried array is copied
    through a select at each iteration, so the chains not moving still pay. ``sequential``
    (``jax.lax.map``) runs one chain after the other inside the same compiled program: no
    selects and no waiting, but no sharing between chains either.
    """
    args = (chain_keys(key, num_chains(chains)), *chains)
    if sequential:
        return jax.lax.map(lambda chain_args: fn(*chain_args), args)
    return jax.vmap(fn)(*args)


def num_chains(positions) -> int:
    return jax.tree.leaves(positions)[0].shape[0]


def dimension(positions) -> int:
    """Parameters per chain."""
    return sum(math.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(positions))


DEVICE_MEMORY_BYTES = 80 * 10**9  # the largest card the package targets (an 80 GB H100)


def refuse_if_too_big(name: str, positions, vectors_per_chain: float, why: str) -> None:
    """Raise ``ValueError`` before tracing a sampler whose state would not fit on the card.

    ``vectors_per_chain``: how many float64 vectors of the parameter dimension the sampler
    keeps alive per chain, counted from its algorithm (positions, momenta, gradients, and
    anything it stores per step).
    """
    dim, chains = dimension(positions), num_chains(positions)
    need = 8 * dim * chains * vectors_per_chain
    if need > DEVICE_MEMORY_BYTES:
        raise ValueError(
            f"sampler {name!r} needs about {need / 1e9:,.0f} GB for {dim:,} parameters x {chains} chains "
            f"({why}), more than an {DEVICE_MEMORY_BYTES // 10**9} GB card holds"
        )


def warmup_length_marker(num_warmup: int) -> jax.Array:
    """A (num_warmup, 0) array: kept in a warm-up state, its shape carries the (static)
    warm-up length into the jitted steps, which only see traced step indices."""
    return jnp.zeros((num_warmup, 0), jnp.int32)


def neutral_stats(lp, acceptance_rate, diverging, n_steps, step_size, energy=None) -> StepStats:
    """StepStats for a sampler with no tree: depth 0, never at the maximum depth."""
    shape = jnp.shape(lp)
    return StepStats(
        lp=lp,
        acceptance_rate=acceptance_rate,
        diverging=diverging,
        energy=jnp.full(shape, jnp.nan, lp.dtype) if energy is None else energy,
        n_steps=jnp.broadcast_to(n_steps, shape).astype(jnp.int32),
        step_size=jnp.broadcast_to(step_size, shape),
        tree_depth=jnp.zeros(shape, jnp.int32),
        reached_max_treedepth=jnp.zeros(shape, bool),
    )
