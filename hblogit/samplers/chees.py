"""ChEES-HMC: jittered HMC whose trajectory length is learnt across many chains."""

from __future__ import annotations

from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc import dynamic_hmc

from .. import checks
from .base import dimension, each_chain, neutral_stats, refuse_if_too_big, register
from .tuned import FlatTunedAtOnce, flat_logdensity, flatten

HALTON_BITS = 20  # the jitter sequence repeats after 2**20 draws


class ChEESParams(NamedTuple):
    """Shared by all chains."""

    step_size: jax.Array
    inverse_mass_matrix: jax.Array  # (d,)
    num_leapfrog_steps: jax.Array  # mean leapfrog steps; each draw takes a jittered fraction
    template: Any  # see tuned.flatten


def _next_draw(i):
    return i + 1


def _integration_steps(i, num_leapfrog_steps):
    """As ``chees_adaptation``'s (jitter_amount 1): a Halton fraction of the mean, rounded up."""
    return jnp.asarray(jnp.ceil(dynamic_hmc.halton_sequence(i, HALTON_BITS) * num_leapfrog_steps), dtype=int)


@register("chees")
class ChEES(FlatTunedAtOnce):
    """ChEES-HMC (Hoffman, Radul & Sountsov 2021): HMC with one step size and one
    trajectory length for all chains, the length jittered draw by draw (a Halton
    sequence) and learnt during warm-up by Adam on the ChEES criterion computed across
    the chains; the step size by dual averaging; a diagonal mass matrix estimated from the
    pooled chains over the second half of warm-up (BlackJAX's ``chees_adaptation`` with
    ``mass_matrix_estimation="diagonal"``, ``_length_floor=False``: the floor would keep a
    d x d covariance, 35 TB at 2.1M parameters). Chains move flat vectors: BlackJAX's
    cross-chain mean assumes every position leaf is (chains, dim) (``tuned.flatten``).

    When: many chains on a GPU (32-512): every chain takes the same number of steps, so
    the vmapped batch has no idle lanes, unlike NUTS. With few chains (under ~16) the
    cross-chain criterion is noisy; use nuts.

    Options: ``learning_rate`` (Adam on the log trajectory length, default 0.025, the
    paper's), ``target_acceptance_rate`` (0.651, BlackJAX's), ``initial_step_size`` (0.1),
    ``max_leapfrog_steps`` (1000). The defaults serve both sizes; more chains help more
    than any option.
    """

    learning_rate: float = eqx.field(static=True, default=0.025)
    target_acceptance_rate: float = eqx.field(static=True, default=0.651)
    initial_step_size: float = eqx.field(static=True, default=0.1)
    max_leapfrog_steps: int = eqx.field(static=True, default=1000)
    name: str = eqx.field(static=True, default="chees")

    def __check_init__(self):
        checks.real(self.learning_rate, "learning_rate", 0)
        checks.real(self.target_acceptance_rate, "target_acceptance_rate", 0, 1)
        checks.real(self.initial_step_size, "initial_step_size", 0)
        checks.integer(self.max_leapfrog_steps, "max_leapfrog_steps")

    def _init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        refuse_if_too_big(self.name, positions, 10, "position, gradient, momentum and proposal per chain")
        flat, template = flatten(positions)
        chain = jax.vmap(dynamic_hmc.init, in_axes=(0, None, None))(flat, flat_logdensity(logdensity, template), 0)
        dtype = chain.logdensity.dtype
        params = ChEESParams(
            jnp.asarray(self.initial_step_size, dtype), jnp.ones(dimension(positions), dtype), jnp.ones((), dtype), template
        )
        return chain, params

    def _tune(self, key, chain, params, logdensity, num_warmup):
        num_chains = chain.logdensity.shape[0]
        adaptation = blackjax.chees_adaptation(
            flat_logdensity(logdensity, params.template),
            num_chains,
            target_acceptance_rate=self.target_acceptance_rate,
            max_leapfrog_steps=self.max_leapfrog_steps,
            adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps"}),
            mass_matrix_estimation="diagonal",
            _length_floor=False,
        )
        (chain, tuned), info = adaptation.run(
            key,
            chain.position,
            params.step_size,
            optax.adam(self.learning_rate),
            num_warmup,
            max_sampling_steps=2**HALTON_BITS - num_warmup,
        )
        params = ChEESParams(
            tuned["step_size"], tuned["inverse_mass_matrix"], tuned["integration_steps_params"][0], params.template
        )
        # run() evaluates the gradient once per chain at its start, then once per leapfrog step
        n_steps = 1 + jnp.sum(info.info.num_integration_steps, axis=0)
        return chain, params, n_steps

    def _transition(self, key, chain, params, logdensity):
        kernel = dynamic_hmc.build_kernel(next_random_arg_fn=_next_draw, integration_steps_fn=_integration_steps)
        logdensity = flat_logdensity(logdensity, params.template)

        def one_chain(key, chain):
            chain, info = kernel(
                key, chain, logdensity, params.step_size, params.inverse_mass_matrix, (params.num_leapfrog_steps,)
            )
            stats = neutral_stats(
                chain.logdensity, info.acceptance_rate, info.is_divergent, info.num_integration_steps, params.step_size, info.energy
            )
            return chain, stats

        return each_chain(one_chain, key, chain)
