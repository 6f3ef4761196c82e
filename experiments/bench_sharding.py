"""Weak and strong scaling of the sharded log-density and gradient (hblogit.sharding).

    python experiments/bench_sharding.py [--devices 1,2,4,8] [--num-obs N] [--num-groups G]
        [--num-covariates K] [--rows-per-device R] [--repeats REPEATS] [--platform cpu|gpu]

strong: the problem of --num-obs / --num-groups (default the post's size) over each device
        count; weak: --rows-per-device rows (and a tenth as many groups) per device.

On the CPU the devices are virtual (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set here before JAX starts unless XLA_FLAGS is set): they share the machine's cores, so
the times show the overhead of the sharded program, not a speed-up. What every row does
prove is correctness: the largest relative error of the value and of every gradient block
against the single-device segment-sum density at the same point, in mixed precision
(float32 data, float64 parameters, as hblogit.fit runs by default).

"psum bytes" is what the one all-reduce per gradient moves in: the value, alpha, beta
and the two log scales (2K + 3 floats of 8 bytes) from every device.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=["cpu", "gpu"], default=None, help="JAX platform (default: JAX's choice)")
    parser.add_argument("--devices", default="1,2,4,8", help="device counts, comma-separated")
    parser.add_argument("--num-obs", type=int, default=1_000_000, help="strong scaling: rows")
    parser.add_argument("--num-groups", type=int, default=100_000, help="strong scaling: groups")
    parser.add_argument("--num-covariates", type=int, default=20)
    parser.add_argument("--rows-per-device", type=int, default=125_000, help="weak scaling: rows per device")
    parser.add_argument("--repeats", type=int, default=10, help="timed evaluations per row")
    return parser.parse_args(argv)


def relative_error(got, expected):
    import numpy as np

    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-300))


def median_seconds(fn, repeats):
    import jax

    jax.block_until_ready(fn())  # compile and warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(kind, num_obs, num_groups, num_covariates, devices, repeats):
    """One table row: the sharded value and gradient against one device's, and its time."""
    import jax
    import jax.numpy as jnp

    import hblogit
    from hblogit import model, sharding

    dataset = hblogit.simulate(num_obs, num_groups, num_covariates, seed=827).dataset()
    params = model.init_params(jax.random.key(0), dataset, dtype=jnp.float64, radius=0.5)
    single = jax.jit(jax.value_and_grad(model.make_logdensity(dataset, layout="segment")))
    value, grad = single(params)
    logdensity = sharding.make_sharded_logdensity(dataset, devices)
    padded = logdensity.to_sharded(params)
    sharded = jax.jit(jax.value_and_grad(logdensity))
    sharded_value, sharded_grad = sharded(padded)
    sharded_grad = logdensity.from_sharded(sharded_grad)
    plan = logdensity.plan
    return dict(
        kind=kind,
        devices=devices,
        rows=num_obs,
        groups=num_groups,
        rows_per_device=plan.rows_per_shard,
        row_padding=plan.rows_per_shard * devices - num_obs,
        group_padding=logdensity.padding_groups,
        ms=1e3 * median_seconds(lambda: sharded(padded), repeats),
        value_error=relative_error(sharded_value, value),
        grad_error=max(relative_error(g, e) for g, e in zip(sharded_grad, grad)),
        psum_bytes=(2 * num_covariates + 3) * 8 * devices,
    )


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.platform:
        jax.config.update("jax_platforms", "cuda" if args.platform == "gpu" else "cpu")
    jax.config.update("jax_enable_x64", True)
    counts = [int(d) for d in args.devices.split(",")]
    device = jax.devices()[0]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {jax.device_count()} x {device.platform}: {device.device_kind}")
    print(f"# python {platform.python_version()}, jax {jax.__version__}; {' '.join(sys.argv)}")
    print("| scaling | devices | rows | groups | padded rows/device | padding rows | padding groups | ms / gradient | value rel. error | grad rel. error | psum bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    K = args.num_covariates
    rows = [("strong", args.num_obs, args.num_groups, d) for d in counts]
    rows += [("weak", args.rows_per_device * d, args.rows_per_device * d // 10, d) for d in counts]
    for kind, num_obs, num_groups, devices in rows:
        r = measure(kind, num_obs, num_groups, K, devices, args.repeats)
        print(
            f"| {r['kind']} | {r['devices']} | {r['rows']:,} | {r['groups']:,} | {r['rows_per_device']:,} | "
            f"{r['row_padding']:,} | {r['group_padding']:,} | {r['ms']:.1f} | {r['value_error']:.1e} | "
            f"{r['grad_error']:.1e} | {r['psum_bytes']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
