"""The energy error of a leapfrog trajectory in float32 and in mixed precision.

    python experiments/precision_energy.py [--num-obs N --num-groups G --num-covariates K]
                                            [--steps L] [--momenta M] [--step-size S]

At 2.1M parameters the Hamiltonian H = -log p + |p|^2 / 2 is ~6 million near the posterior
(measured: experiments/RESULTS.md), where float32's spacing is 0.5: every energy difference,
and with it NUTS's acceptance statistic and the step-size adaptation, is rounded to a
multiple of that. This script starts near the
posterior (hblogit's own starting points), draws M momenta, runs L velocity-Verlet steps of
BlackJAX's integrator with the unit metric, and reports the distribution of
Delta H = H(end) - H(start) for float32 parameters and for mixed precision (float32 data,
float64 parameters and reductions), at the same points and momenta.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from blackjax.mcmc import integrators, metrics  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import hblogit  # noqa: E402
from hblogit import runner  # noqa: E402


def energy_errors(logdensity, position, step_size, steps, momenta_key, count, dtype):
    position = jax.tree.map(lambda x: x.astype(dtype), position)
    flat, unravel = ravel_pytree(position)
    metric = metrics.default_metric(jnp.ones(flat.shape, dtype))
    step = integrators.velocity_verlet(logdensity, metric.kinetic_energy)

    def one(key):
        momentum = unravel(jax.random.normal(key, flat.shape, jnp.float64).astype(dtype))
        value, grad = jax.value_and_grad(logdensity)(position)
        state = integrators.IntegratorState(position, momentum, value, grad)
        h0 = -state.logdensity + metric.kinetic_energy(state.momentum)
        state = jax.lax.fori_loop(0, steps, lambda _, s: step(s, jnp.asarray(step_size, dtype)), state)
        h1 = -state.logdensity + metric.kinetic_energy(state.momentum)
        return h1 - h0, h0

    return jax.jit(jax.vmap(one))(jax.random.split(momenta_key, count))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-obs", type=int, default=1_000_000)
    parser.add_argument("--num-groups", type=int, default=100_000)
    parser.add_argument("--num-covariates", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8, help="leapfrog steps per trajectory")
    parser.add_argument("--step-size", type=float, default=0.002)
    parser.add_argument("--momenta", type=int, default=16)
    args = parser.parse_args(argv)

    dataset = hblogit.simulate(args.num_obs, args.num_groups, args.num_covariates).dataset()
    logdensity = hblogit.make_logdensity(dataset)
    start = runner.starting_points(jax.random.key(0), logdensity, 1, 100, 0.05, jnp.float64)
    position = jax.tree.map(lambda x: x[0], start.positions)
    print(f"# N={args.num_obs:,} G={args.num_groups:,} K={args.num_covariates}: d = {dataset.num_params:,}; "
          f"{args.momenta} momenta, {args.steps} leapfrog steps of {args.step_size}")
    print("| precision | H at start | float spacing of H | mean dH | sd dH | spacing / sd dH | first dH values |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, dtype in (("float32", jnp.float32), ("mixed", jnp.float64)):
        dh, h0 = (np.asarray(v, np.float64) for v in energy_errors(logdensity, position, args.step_size, args.steps, jax.random.key(1), args.momenta, dtype))
        spacing = float(np.spacing(np.asarray(h0[0], dtype)))
        print(f"| {name} | {h0.mean():.7g} | {spacing:.3g} | {dh.mean():.4f} | {dh.std():.4f} | {spacing / dh.std():.2g} | {np.array2string(dh[:4], precision=4)} |")


if __name__ == "__main__":
    main()
