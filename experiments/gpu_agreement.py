"""The log-density and gradient on the accelerator against float64 on the CPU, same point.

    python experiments/gpu_agreement.py [--smoke] [--layouts auto,fused]

The CPU float64 path is the one the test suite checks against PyMC to 1e-10; this script
shows the accelerator gives the same numbers: float64 on the device to rounding, and the
float32 and mixed (float32 data, float64 parameters) modes to their stated tolerances; in the
layout "auto" picks and in "fused" (``hblogit.fused``'s kernel; interpreted on a CPU).
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hblogit  # noqa: E402
from hblogit.presets import PRESETS  # noqa: E402


def value_and_grad_on(device, dataset, params, layout="auto"):
    dataset, params = jax.device_put((dataset, params), device)
    value, grad = jax.jit(jax.value_and_grad(hblogit.make_logdensity(dataset, layout=layout)))(params)
    return float(value), np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in grad])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the small preset instead of the post's size")
    parser.add_argument("--layouts", default="auto,fused", help="comma-separated layouts, checked in this order (default: auto,fused)")
    args = parser.parse_args(argv)
    sim = hblogit.simulate(**PRESETS["small" if args.smoke else "seed"])
    data32 = sim.dataset()
    data64 = hblogit.Dataset(sim.X.astype(np.float64), sim.y, sim.group_idx, num_groups=data32.num_groups)
    params = hblogit.init_params(jax.random.key(1), data64, radius=1.0, dtype=jnp.float64)
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    device = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    ref_value, ref_grad = value_and_grad_on(cpu, data64, params)
    scale = np.max(np.abs(ref_grad))
    print(f"# {device.platform} ({device.device_kind}) against CPU float64; N={data64.num_obs:,} G={data64.num_groups:,} K={data64.num_covariates}")
    print("| mode on the device | layout | value rel. error | gradient max abs error / max abs gradient |")
    print("| --- | --- | ---: | ---: |")
    for layout in args.layouts.split(","):
        for mode, data, point in (("float64", data64, params), ("mixed", data32, params), ("float32", data32, params32)):
            value, grad = value_and_grad_on(device, data, point, layout)
            print(f"| {mode} | {layout} | {abs(value - ref_value) / abs(ref_value):.2e} | {np.max(np.abs(grad - ref_grad)) / scale:.2e} |", flush=True)


if __name__ == "__main__":
    main()
