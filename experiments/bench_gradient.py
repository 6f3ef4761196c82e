"""Time one log-density value-and-gradient at the post's size, hblogit against PyMC.

    python experiments/bench_gradient.py [--platform cpu|gpu] [--chains C] [--repeats R]

Contenders, in one process, on the same data and at the same float32 point:
  hblogit          jax.jit(jax.value_and_grad(logdensity)), vmapped over C chains when C > 1
  pymc-dlogp       PyMC's model.compile_dlogp() (PyTensor's default backend), the post's CPU number
  pymc-jax         jax.jit(jax.value_and_grad(get_jaxified_logp(model))), the post's GPU number

Prints a markdown table of medians and each contender's time over hblogit's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=["cpu", "gpu"], default=None, help="JAX platform (default: JAX's choice)")
    parser.add_argument("--num-obs", type=int, default=1_000_000)
    parser.add_argument("--num-groups", type=int, default=100_000)
    parser.add_argument("--num-covariates", type=int, default=20)
    parser.add_argument("--chains", type=int, default=1, help="chains evaluated at once (vmap) by hblogit")
    parser.add_argument("--repeats", type=int, default=10, help="timed evaluations per contender")
    parser.add_argument("--skip-pymc", action="store_true", help="time hblogit alone (no PyMC installed)")
    parser.add_argument("--smoke", action="store_true", help="a tiny size, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_obs, args.num_groups, args.repeats = 20_000, 2_000, 3
    return args


def median_seconds(fn, repeats):
    """Median wall time of fn() after one untimed call (compilation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.platform == "gpu" else "cpu"
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hblogit

    sim = hblogit.simulate(args.num_obs, args.num_groups, args.num_covariates, seed=827)
    dataset = sim.dataset()
    point = hblogit.init_params(jax.random.key(0), dataset, radius=0.5, dtype=jnp.float32)
    logdensity = hblogit.make_logdensity(dataset)
    value_and_grad = jax.jit(jax.value_and_grad(logdensity))
    if args.chains > 1:
        point = jax.tree.map(lambda x: jnp.broadcast_to(x, (args.chains, *x.shape)), point)
        value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(logdensity)))

    def block(result):
        return jax.block_until_ready(result)

    rows = []
    start = time.perf_counter()
    block(value_and_grad(point))
    compile_s = time.perf_counter() - start
    rows.append(("hblogit", median_seconds(lambda: block(value_and_grad(point)), args.repeats), compile_s))

    if not args.skip_pymc:
        rows += time_pymc(sim, jax.tree.map(lambda x: np.asarray(x[0] if args.chains > 1 else x), point), args.repeats, block)

    device = jax.devices()[0]
    print(f"# value-and-gradient, N={args.num_obs:,} G={args.num_groups:,} K={args.num_covariates}, float32, chains={args.chains}")
    print(f"# device: {device.platform} ({device.device_kind}); host: {platform.node()} {os.cpu_count()} cores; "
          f"jax {jax.__version__}, python {sys.version.split()[0]}")
    print("| contender | median (ms) | first call incl. compile (s) | time / hblogit |")
    print("| --- | ---: | ---: | ---: |")
    base = rows[0][1]
    for name, seconds, first in rows:
        print(f"| {name} | {seconds * 1e3:.2f} | {first:.2f} | {seconds / base:.2f} |")


def time_pymc(sim, point, repeats, block):
    import jax
    import pytensor

    pytensor.config.floatX = "float32"
    from pymc.sampling.jax import get_jaxified_logp

    from reference.model import build_model, params_to_point

    model = build_model(sim.X, sim.y, sim.group_idx, num_groups=sim.truth.alpha_group.shape[0])
    pymc_point = params_to_point(point, dtype="float32")
    rows = []
    start = time.perf_counter()
    dlogp = model.compile_dlogp()
    dlogp(pymc_point)
    first = time.perf_counter() - start
    rows.append(("pymc-dlogp (PyTensor)", median_seconds(lambda: dlogp(pymc_point), repeats), first))

    values = [jax.numpy.asarray(pymc_point[v.name]) for v in model.value_vars]
    jax_value_and_grad = jax.jit(jax.value_and_grad(get_jaxified_logp(model)))
    start = time.perf_counter()
    block(jax_value_and_grad(values))
    first = time.perf_counter() - start
    rows.append(("pymc-jax (jaxified logp)", median_seconds(lambda: block(jax_value_and_grad(values)), repeats), first))
    return rows


if __name__ == "__main__":
    main()
