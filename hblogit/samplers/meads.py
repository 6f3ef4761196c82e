"""MEADS: generalised HMC (one leapfrog step, persistent momentum) tuned across chains."""

from __future__ import annotations

from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn

from .base import chain_keys, neutral_stats, num_chains, refuse_if_too_big, register
from .tuned import FlatTunedAtOnce, flat_logdensity, flatten


class MEADSParams(NamedTuple):
    """Shared by all chains (BlackJAX averages the per-fold values at the end of warm-up)."""

    step_size: jax.Array
    momentum_inverse_scale: jax.Array  # (d,): the posterior sd
    alpha: jax.Array  # momentum persistence
    delta: jax.Array  # slice-variable drift
    template: Any  # see tuned.flatten


@register("meads")
class MEADS(FlatTunedAtOnce):
    """Generalised HMC (one leapfrog step per draw, partially refreshed momentum, a
    non-reversible slice-variable Metropolis test) with MEADS (Hoffman & Sountsov 2022):
    step size, damping and a diagonal scale set from the spread of the other chains,
    ``num_folds`` folds taking turns (BlackJAX's ``meads_adaptation`` with
    ``low_rank_rank=None``, so no d x d covariance).

    When: many chains (a multiple of ``num_folds``; 32 or more) on a GPU, where a one-step
    kernel keeps every chain in lockstep. Its ESS per gradient is usually below NUTS', but
    it wastes no lanes and needs no trajectory length. The chain count must be a multiple
    of ``num_folds``.

    Known failure (BlackJAX 1.7.1): its warm-up drifts out of the typical set, with
    acceptance near 1 while the step size collapses, both on this model and on a
    128-dimensional Gaussian with sds 0.1-3 (median log-density -13,500 after 1,000 steps
    against -64 expected); ``blackjax.ghmc`` with fixed parameters samples that Gaussian
    correctly, so the fault is in the adaptation. Registered for the study; do not use it
    for inference until that is fixed.

    Options: ``num_folds`` (4, the paper's), ``step_size_multiplier`` (0.5),
    ``damping_slowdown`` (1.0). The defaults serve both sizes.
    """

    num_folds: int = eqx.field(static=True, default=4)
    step_size_multiplier: float = eqx.field(static=True, default=0.5)
    damping_slowdown: float = eqx.field(static=True, default=1.0)
    name: str = eqx.field(static=True, default="meads")

    def _init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        if num_chains(positions) % self.num_folds:
            raise ValueError(
                f"sampler 'meads' needs a number of chains divisible by num_folds = {self.num_folds}, "
                f"got {num_chains(positions)}"
            )
        refuse_if_too_big(self.name, positions, 8, "position, momentum, gradient and proposal per chain")
        keys = chain_keys(jax.random.key(0), num_chains(positions))
        flat, template = flatten(positions)
        chain = jax.vmap(blackjax.ghmc.init, in_axes=(0, None, 0))(flat, flat_logdensity(logdensity, template), keys)
        one = jnp.ones((), chain.logdensity.dtype)
        params = MEADSParams(one, jnp.ones_like(flat[0]), one, one, template)
        return chain, params

    def _tune(self, key, chain, params, logdensity, num_warmup):
        adaptation = blackjax.meads_adaptation(
            flat_logdensity(logdensity, params.template),
            num_chains(chain.position),
            num_folds=self.num_folds,
            step_size_multiplier=self.step_size_multiplier,
            damping_slowdown=self.damping_slowdown,
            adaptation_info_fn=get_filter_adapt_info_fn(),
            low_rank_rank=None,
        )
        (chain, tuned), _ = adaptation.run(key, chain.position, num_warmup)
        # one gradient per chain to start, then one per step for every chain (the frozen
        # fold's step is computed and then discarded)
        n_steps = jnp.full(chain.logdensity.shape, 1 + num_warmup, jnp.int32)
        return chain, MEADSParams(**tuned, template=params.template), n_steps

    def _transition(self, key, chain, params, logdensity):
        kernel = blackjax.ghmc.build_kernel()
        logdensity = flat_logdensity(logdensity, params.template)

        def one_chain(key, chain):
            chain, info = kernel(
                key, chain, logdensity, params.step_size, params.momentum_inverse_scale, params.alpha, params.delta
            )
            stats = neutral_stats(chain.logdensity, info.acceptance_rate, info.is_divergent, 1, params.step_size, info.energy)
            return chain, stats

        return jax.vmap(one_chain)(chain_keys(key, chain.logdensity.shape[0]), chain)
