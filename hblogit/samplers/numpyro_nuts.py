"""NumPyro's NUTS on ``potential_fn = -logdensity``: a second, independent NUTS to cross-check."""

from __future__ import annotations

import importlib.util
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import checks
from .base import StepStats, chain_keys, register, warmup_length_marker


class NumPyroState(NamedTuple):
    chain: Any  # numpyro.infer.hmc.HMCState, batched over chains
    length: jax.Array  # warmup_length_marker(num_warmup)


def _potential(logdensity):
    return lambda position: -logdensity(position)


@register("numpyro-nuts")
class NumPyroNUTS(eqx.Module):
    """NumPyro's NUTS (``numpyro.infer.hmc.hmc(algo="NUTS")``) with its own warm-up (Stan's
    windows, diagonal mass matrix), one chain per vmap lane as ``chain_method="vectorized"``.

    When: to cross-check the default ``nuts`` against an independent implementation of the
    same algorithm (tree building, adaptation schedule, regularised mass matrix all
    NumPyro's). It is slower to compile and no faster than ``nuts``. Needs
    ``pip install 'hblogit[numpyro]'``.

    Driven through NumPyro's functional kernel rather than ``MCMC.run``, so the runner keeps
    only what it keeps for any sampler: ``potential_fn_gen`` takes the log-density as a
    model argument, so one compiled program serves any dataset of the same shape. Its
    ``tree_depth`` is inferred from the leapfrog count (``ceil(log2(n + 1))``), which NumPyro
    does not report.

    Options: ``max_tree_depth`` (10), ``target_acceptance_rate`` (0.8),
    ``initial_step_size`` (1.0); the same at any size.
    """

    max_tree_depth: int = eqx.field(static=True, default=10)
    target_acceptance_rate: float = eqx.field(static=True, default=0.8)
    initial_step_size: float = eqx.field(static=True, default=1.0)
    name: str = eqx.field(static=True, default="numpyro-nuts")

    def __check_init__(self):
        if importlib.util.find_spec("numpyro") is None:
            raise ValueError("sampler 'numpyro-nuts' needs NumPyro: pip install 'hblogit[numpyro]'")
        checks.integer(self.max_tree_depth, "max_tree_depth")
        checks.real(self.target_acceptance_rate, "target_acceptance_rate", 0, 1)
        checks.real(self.initial_step_size, "initial_step_size", 0)

    def _kernels(self, num_warmup: int, positions, logdensity, inverse_mass_matrix):
        """NumPyro's (init_kernel, sample_kernel). ``init_kernel`` also configures
        ``sample_kernel`` (warm-up schedule, tree depth) through closure variables, so it
        is traced here once more, shapes only, before any ``sample_kernel`` call."""
        from numpyro.infer.hmc import hmc

        init_kernel, sample_kernel = hmc(potential_fn_gen=_potential, algo="NUTS")

        def init_one(position, inverse_mass_matrix):
            return init_kernel(
                position,
                num_warmup,
                step_size=self.initial_step_size,
                inverse_mass_matrix=inverse_mass_matrix,
                target_accept_prob=self.target_acceptance_rate,
                max_tree_depth=self.max_tree_depth,
                model_args=(logdensity,),
                rng_key=jax.random.key(0),
            )

        batched_init = jax.vmap(init_one)
        jax.eval_shape(batched_init, positions, inverse_mass_matrix)
        return batched_init, sample_kernel

    def init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        init, _ = self._kernels(num_warmup, positions, logdensity, inverse_mass_matrix)
        return NumPyroState(init(positions, inverse_mass_matrix), warmup_length_marker(num_warmup))

    def _step(self, key, state, logdensity):
        chain = state.chain
        _, sample_kernel = self._kernels(
            state.length.shape[0], chain.z, logdensity, chain.adapt_state.inverse_mass_matrix
        )
        chain = chain._replace(rng_key=chain_keys(key, chain.i.shape[0]))
        chain = jax.vmap(lambda c: sample_kernel(c, model_args=(logdensity,)))(chain)
        depth = jnp.ceil(jnp.log2(chain.num_steps + 1.0)).astype(jnp.int32)
        stats = StepStats(
            lp=-chain.potential_energy,
            acceptance_rate=chain.accept_prob,
            diverging=chain.diverging,
            energy=chain.energy,
            n_steps=chain.num_steps.astype(jnp.int32),
            step_size=chain.adapt_state.step_size,
            tree_depth=depth,
            reached_max_treedepth=depth >= self.max_tree_depth,
        )
        return NumPyroState(chain, state.length), stats

    def warmup_step(self, key, state, logdensity, step_index):
        return self._step(key, state, logdensity)

    def finish_warmup(self, state):
        return state

    def step(self, key, state, logdensity):
        return self._step(key, state, logdensity)

    def position(self, state):
        return state.chain.z
