"""Unadjusted MCLMC (microcanonical Langevin), tuned by BlackJAX's ``mclmc_find_L_and_step_size``."""

from __future__ import annotations

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
from blackjax.util import generate_unit_vector

from .. import checks
from .base import chain_keys, dimension, each_chain, neutral_stats, num_chains, refuse_if_too_big, register
from .tuned import TunedAtOnce

GRADIENTS_PER_STEP = 2  # the default integrator, isokinetic McLachlan, has two force stages


def tuning_steps(num_warmup: int, frac_tune1: float, frac_tune2: float, frac_tune3: float) -> int:
    """Kernel steps ``mclmc_find_L_and_step_size(num_steps=num_warmup, ...)`` takes, with
    diagonal preconditioning: phases 1 and 2, a third of phase 2 again to re-tune the step
    size under the new mass matrix, and phase 3 when it has at least two steps."""
    n1, n2, n3 = (round(num_warmup * f) for f in (frac_tune1, frac_tune2, frac_tune3))
    return n1 + n2 + (round(n2 / 3) if n2 > 1 else 0) + (n3 if n3 >= 2 else 0)


def pilot_step_size(kernel, chain, logdensity, params, keys, desired_energy_var):
    """A step size from ``len(keys)`` kernel steps, each rescaling it by the energy error it
    produced, through Var[E] ~ step^6 (the relation BlackJAX's tuner averages); a step
    whose energy is not finite cuts it tenfold (the kernel has already reverted the move).

    BlackJAX's own starting guess, 0.25 sqrt(d) (about 362 at the post's 2.1M parameters),
    can be orders of magnitude off, and its tuner down-weights estimates far from the
    current value, so starting there wastes most of phase 1.
    """
    dim = dimension(jax.tree.map(lambda x: x[None], chain.position))

    def one(carry, key):
        chain, step_size = carry
        chain, info = kernel(key, chain, logdensity, params.inverse_mass_matrix, params.L, step_size)
        xi = jnp.square(info.energy_change) / (dim * desired_energy_var) + 1e-8
        factor = jnp.where(info.nonans, jnp.clip(xi ** (-1.0 / 6.0), 0.1, 2.0), 0.1)
        return (chain, step_size * factor), None

    (chain, step_size), _ = jax.lax.scan(one, (chain, params.step_size), keys)
    return chain, step_size


@register("mclmc")
class MCLMC(TunedAtOnce):
    """Unadjusted microcanonical Langevin Monte Carlo (Robnik et al.), two gradients a step.

    Biased by design: there is no Metropolis correction, so draws come from a slightly
    wrong distribution whose error grows with the step size; the tuner sizes the step for
    an energy-error variance per dimension of ``desired_energy_var`` (bias in the
    variances of order 1e-3 of the posterior sd, about). Use it when ESS per gradient
    matters more than exactness, at large d (it needs no tree and no rejection, so every
    chain does the same work), and check its means against an exact sampler once.

    Warm-up: a short pilot (``pilot_steps`` steps) sizes the step from the runner's mass
    matrix guess, then BlackJAX's ``mclmc_find_L_and_step_size`` with ``num_steps =
    num_warmup`` and diagonal preconditioning runs phases 1-2 (step size, mass matrix,
    L = sqrt(d) in whitened units). Phase 3 (L from the autocorrelation time) stores every
    position it visits (``frac_tune3 * num_warmup`` per chain, 1.7 GB a chain at 2.1M
    parameters for 0.1 of 1,000 steps, several times that while it estimates their ESS),
    so it is off by default; a run that would not fit the card is refused.

    Options: ``frac_tune1`` (0.4), ``frac_tune2`` (0.45), ``frac_tune3`` (0.0): fractions
    of ``num_warmup`` for the three phases (phase 2 adds a third of itself to re-tune the
    step); ``desired_energy_var`` (5e-4); ``pilot_steps`` (10). The same defaults serve the
    small problems and the post's 2.1M parameters.
    """

    frac_tune1: float = eqx.field(static=True, default=0.4)
    frac_tune2: float = eqx.field(static=True, default=0.45)
    frac_tune3: float = eqx.field(static=True, default=0.0)
    desired_energy_var: float = eqx.field(static=True, default=5e-4)
    pilot_steps: int = eqx.field(static=True, default=10)
    name: str = eqx.field(static=True, default="mclmc")

    def __check_init__(self):
        for name in ("frac_tune1", "frac_tune2", "frac_tune3"):
            checks.real(getattr(self, name), name, 0, 1, closed=True)
        checks.real(self.desired_energy_var, "desired_energy_var", 0)
        checks.integer(self.pilot_steps, "pilot_steps")

    def _kernel(self):
        return blackjax.mcmc.mclmc.build_kernel()

    def _init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        phase3 = round(num_warmup * self.frac_tune3)
        stored = phase3 if phase3 >= 2 else 0
        # the FFT-based ESS of the stored positions takes about five more copies of them
        refuse_if_too_big(self.name, positions, 10 + 6 * stored, f"phase 3 stores {stored} positions per chain")
        keys = chain_keys(jax.random.key(0), inverse_mass_matrix.shape[0])
        chain = jax.vmap(blackjax.mcmc.mclmc.init, in_axes=(0, None, 0))(positions, logdensity, keys)
        sqrt_dim = jnp.sqrt(jnp.asarray(dimension(positions), chain.logdensity.dtype))
        guess = jnp.full_like(chain.logdensity, 1.0)
        return chain, MCLMCAdaptationState(sqrt_dim * guess, 0.25 * sqrt_dim * guess, inverse_mass_matrix)

    def _seeded(self, key, chain):
        """The starting momentum: a unit vector, as ``blackjax.mcmc.mclmc.init`` draws it."""
        momentum = jax.vmap(generate_unit_vector)(chain_keys(key, num_chains(chain.position)), chain.position)
        return chain._replace(momentum=momentum)

    def _tune(self, key, chain, params, logdensity, num_warmup):
        kernel = self._kernel()

        def one_chain(key, chain, params):
            pilot_key, tune_key = jax.random.split(key)
            pilot_keys = jax.random.split(pilot_key, self.pilot_steps)
            chain, step_size = pilot_step_size(kernel, chain, logdensity, params, pilot_keys, self.desired_energy_var)
            chain, params, _ = blackjax.mclmc_find_L_and_step_size(
                kernel,
                num_warmup,
                chain,
                tune_key,
                logdensity_fn=logdensity,
                frac_tune1=self.frac_tune1,
                frac_tune2=self.frac_tune2,
                frac_tune3=self.frac_tune3,
                desired_energy_var=self.desired_energy_var,
                params=params._replace(step_size=step_size),
            )
            return chain, params

        chain, params = each_chain(one_chain, key, chain, params)
        steps = self.pilot_steps + tuning_steps(num_warmup, self.frac_tune1, self.frac_tune2, self.frac_tune3)
        return chain, params, jnp.full(chain.logdensity.shape, GRADIENTS_PER_STEP * steps, jnp.int32)

    def _transition(self, key, chain, params, logdensity):
        kernel = self._kernel()

        def one_chain(key, chain, params):
            chain, info = kernel(key, chain, logdensity, params.inverse_mass_matrix, params.L, params.step_size)
            lp = chain.logdensity
            return chain, neutral_stats(lp, jnp.ones_like(lp), ~info.nonans, GRADIENTS_PER_STEP, params.step_size)

        return each_chain(one_chain, key, chain, params)
