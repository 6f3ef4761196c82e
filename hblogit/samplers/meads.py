"""MEADS: generalised HMC (one leapfrog step, persistent momentum) tuned across chains."""

from __future__ import annotations

from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from blackjax.adaptation.meads_adaptation import maximum_eigenvalue
from blackjax.util import generate_gaussian_noise

from .. import checks
from .base import chain_keys, each_chain, neutral_stats, num_chains, refuse_if_too_big, register
from .tuned import FlatTunedAtOnce, flat_logdensity, flatten


class MEADSParams(NamedTuple):
    """Shared by all chains: the per-fold values of the last warm-up step, averaged."""

    step_size: jax.Array  # in units of the scale below
    scale: jax.Array  # (d,): the posterior sd; a coordinate's leapfrog step is step_size * scale
    alpha: jax.Array  # momentum refresh: 1 - alpha of the momentum's variance persists
    delta: jax.Array  # slice-variable drift
    template: Any  # see tuned.flatten


def _ghmc_step(kernel, key, state, logdensity, step_size, scale, alpha, delta):
    """One GHMC step preconditioned by ``scale`` through a per-coordinate step size
    ``step_size * scale`` with a unit mass matrix, so the persistent momentum is always
    standard normal. The same leapfrog step as BlackJAX's ``momentum_inverse_scale=scale``
    (there the momentum is ``N(0, 1 / scale**2)``), but a change of ``scale`` between
    steps leaves the momentum's distribution correct."""
    return kernel(key, state, logdensity, step_size * scale, jnp.ones_like(scale), alpha, delta)


def meads_warmup(key, chain, logdensity, num_steps, num_folds, step_size_multiplier, damping_slowdown):
    """Algorithm 3 of Hoffman & Sountsov (2022) on flat (chains, d) GHMC states, as
    BlackJAX 1.7.1's ``meads_adaptation(low_rank_rank=None)`` computes it (step size from
    the fold to the left's scaled gradients, damping from the fold's own scaled positions,
    fold ``t mod K`` frozen, chains reshuffled every K steps), but with the momentum kept
    standard normal as in the paper's reference code (``_ghmc_step``).

    BlackJAX carries each chain's momentum ``p ~ N(0, 1 / scale_old**2)`` unchanged into a
    step whose metric is ``scale_new`` (the scale is re-estimated every step, from another
    fold, and chains change folds), multiplying its kinetic energy coordinate by coordinate
    by ``(scale_new / scale_old)**2``, whose mean exceeds 1 (for independent sd estimates
    from 4 chains a fold, 3). With the persistent momentum of late warm-up this heats
    the chains out of the typical set, the scale estimates grow and the step size collapses.
    """
    kernel = blackjax.ghmc.build_kernel()
    num_chains, dim = chain.position.shape
    per_fold = num_chains // num_folds
    key_momentum, key_slice, key_run = jax.random.split(key, 3)
    dtype = chain.position.dtype
    # fresh momenta (standard normal, as _ghmc_step wants) and slices for this seed
    chain = chain._replace(
        momentum=jax.random.normal(key_momentum, chain.position.shape, dtype),
        slice=jax.random.uniform(key_slice, chain.slice.shape, chain.slice.dtype, -1.0, 1.0),
    )

    def repeat(x):  # per fold -> per chain
        return jnp.repeat(x, per_fold, axis=0)

    def one_step(carry, xs):
        chain, _ = carry
        t, key = xs
        key_step, key_perm = jax.random.split(key)
        position = chain.position.reshape(num_folds, per_fold, dim)
        grad = chain.logdensity_grad.reshape(num_folds, per_fold, dim)
        scale = position.std(axis=1)
        scale = jnp.where(scale > 0, scale, 1.0)
        # fold k steps with the scale and step size of fold k - 1, damping from its own spread
        step_size = jnp.minimum(
            1.0, step_size_multiplier / jnp.sqrt(jax.vmap(maximum_eigenvalue)(grad * scale[:, None]))
        )
        step_size, step_scale = jnp.roll(step_size, 1), jnp.roll(scale, 1, axis=0)
        centred = (position - position.mean(axis=1, keepdims=True)) / scale[:, None]
        damping = jnp.maximum(
            1.0 / jnp.sqrt(jax.vmap(maximum_eigenvalue)(centred)), damping_slowdown / ((t + 1) * step_size)
        )
        alpha = 1.0 - jnp.exp(-2.0 * step_size * damping)
        delta = alpha / 2
        new, _ = jax.vmap(_ghmc_step, in_axes=(None, 0, 0, None, 0, 0, 0, 0))(
            kernel, jax.random.split(key_step, num_chains), chain, logdensity,
            repeat(step_size), repeat(step_scale), repeat(alpha), repeat(delta),
        )  # fmt: skip
        frozen = repeat(jnp.arange(num_folds) == t % num_folds)
        chain = jax.tree.map(lambda n, o: jnp.where(frozen.reshape((-1,) + (1,) * (n.ndim - 1)), o, n), new, chain)
        perm = jax.random.permutation(key_perm, num_chains)
        chain = jax.lax.cond(
            (t + 1) % num_folds == 0, lambda c: jax.tree.map(lambda x: x[perm], c), lambda c: c, chain
        )
        return (chain, (step_size, step_scale, alpha, delta)), None

    zeros = jnp.zeros(num_folds, dtype)
    start = (zeros, jnp.ones((num_folds, dim), dtype), zeros, zeros)
    steps = (jnp.arange(num_steps), jax.random.split(key_run, num_steps))
    (chain, (step_size, scale, alpha, delta)), _ = jax.lax.scan(one_step, (chain, start), steps)
    return chain, (step_size.mean(), scale.mean(axis=0), alpha.mean(), delta.mean())


@register("meads")
class MEADS(FlatTunedAtOnce):
    """Generalised HMC (one leapfrog step per draw, partially refreshed momentum, a
    non-reversible slice-variable Metropolis test) with MEADS (Hoffman & Sountsov 2022):
    step size, damping and a diagonal scale set from the spread of the other chains,
    ``num_folds`` folds taking turns. The warm-up is ``meads_warmup`` below: BlackJAX
    1.7.1's ``meads_adaptation`` (``low_rank_rank=None``) rewritten to keep the persistent
    momentum standard normal while the scale changes, as the paper's reference code does.

    When: many chains (a multiple of ``num_folds``; 32 or more) on a GPU, where a one-step
    kernel keeps every chain in lockstep. Its ESS per gradient is usually below NUTS', but
    it wastes no lanes and needs no trajectory length. The chain count must be a multiple
    of ``num_folds``, with at least 2 chains a fold (the scale is each fold's sd).

    Why not ``blackjax.meads_adaptation`` itself: its warm-up drifted out of the typical
    set (acceptance near 1 while the step size collapsed), on this model and on a
    128-dimensional Gaussian with sds 0.1-3 (16 chains, 1,000 steps: median log-density
    -1,939 against -104.6 expected, step size 4e-4, scale estimates up to 69 times the sd).
    It passes the momentum of the previous step, drawn for the previous scale, to a kernel
    whose metric has a new scale (see ``meads_warmup``). Same Gaussian with this warm-up:
    -103.1 after warm-up; 2,000 draws average -104.54 (+-0.16), coordinate means and
    variances within Monte Carlo error.

    Options: ``num_folds`` (4, the paper's), ``step_size_multiplier`` (0.5),
    ``damping_slowdown`` (1.0). The defaults serve both sizes.
    """

    num_folds: int = eqx.field(static=True, default=4)
    step_size_multiplier: float = eqx.field(static=True, default=0.5)
    damping_slowdown: float = eqx.field(static=True, default=1.0)
    name: str = eqx.field(static=True, default="meads")

    def __check_init__(self):
        checks.integer(self.num_folds, "num_folds")
        checks.real(self.step_size_multiplier, "step_size_multiplier", 0)
        checks.real(self.damping_slowdown, "damping_slowdown", 0)

    def _init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        if num_chains(positions) % self.num_folds or num_chains(positions) < 2 * self.num_folds:
            raise ValueError(
                f"sampler 'meads' needs a number of chains divisible by num_folds = {self.num_folds} "
                f"and at least 2 a fold (each fold's spread sets the scale), got {num_chains(positions)}"
            )
        refuse_if_too_big(self.name, positions, 8, "position, momentum, gradient and proposal per chain")
        keys = chain_keys(jax.random.key(0), num_chains(positions))
        flat, template = flatten(positions)
        chain = jax.vmap(blackjax.ghmc.init, in_axes=(0, None, 0))(flat, flat_logdensity(logdensity, template), keys)
        one = jnp.ones((), chain.logdensity.dtype)
        params = MEADSParams(one, jnp.ones_like(flat[0]), one, one, template)
        return chain, params

    def _seeded(self, key, chain):
        """The starting momentum and slice variable, as ``blackjax.ghmc.init`` draws them."""

        def one_chain(key, position):
            key_momentum, key_slice = jax.random.split(key)
            return generate_gaussian_noise(key_momentum, position), jax.random.uniform(key_slice, minval=-1.0, maxval=1.0)

        momentum, slice_variable = jax.vmap(one_chain)(chain_keys(key, num_chains(chain.position)), chain.position)
        return chain._replace(momentum=momentum, slice=slice_variable)

    def _tune(self, key, chain, params, logdensity, num_warmup):
        chain, (step_size, scale, alpha, delta) = meads_warmup(
            key,
            chain,
            flat_logdensity(logdensity, params.template),
            num_warmup,
            self.num_folds,
            self.step_size_multiplier,
            self.damping_slowdown,
        )
        # one step per warm-up step for every chain (the frozen fold's step is computed
        # and then discarded); the starting gradients are _init's
        n_steps = jnp.full(chain.logdensity.shape, num_warmup, jnp.int32)
        return chain, MEADSParams(step_size, scale, alpha, delta, params.template), n_steps

    def _transition(self, key, chain, params, logdensity):
        kernel = blackjax.ghmc.build_kernel()
        logdensity = flat_logdensity(logdensity, params.template)

        def one_chain(key, chain):
            chain, info = _ghmc_step(
                kernel, key, chain, logdensity, params.step_size, params.scale, params.alpha, params.delta
            )
            stats = neutral_stats(chain.logdensity, info.acceptance_rate, info.is_divergent, 1, params.step_size, info.energy)
            return chain, stats

        return each_chain(one_chain, key, chain)
