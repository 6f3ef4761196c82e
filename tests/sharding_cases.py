"""Cases for hblogit.sharding on four virtual CPU devices (run by test_sharding.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.sharding import PartitionSpec as P

import hblogit
from hblogit import model, runner, sharding
from hblogit.samplers import get_sampler

from .conftest import random_problem

DEVICES = 4
GROUP_SPEC = P(None, sharding.AXIS)  # (chains, groups, ...): chains whole, groups split


def setup_module():
    assert jax.device_count() == DEVICES, "run through test_sharding.py, which sets XLA_FLAGS"


def uneven_problem(seed, num_groups):
    """Unsorted rows, very uneven group sizes (one group a third of the rows), empty groups."""
    X, y, group_idx = random_problem(seed, 600, num_groups, 3)
    group_idx = np.where(group_idx % 3 == 0, 1, group_idx)
    return hblogit.Dataset(X, y, group_idx, num_groups=num_groups)


@pytest.mark.parametrize("num_groups", [23, 3, 40])  # not a multiple of 4; fewer than 4 used
def test_value_and_gradient_equal_single_device(num_groups):
    dataset = uneven_problem(num_groups, num_groups)
    sharded = sharding.make_sharded_logdensity(dataset, DEVICES)
    single = model.make_logdensity(dataset, layout="segment")
    params = model.init_params(jax.random.key(num_groups), dataset)
    value, grad = jax.jit(jax.value_and_grad(single))(params)
    padded = sharded.to_sharded(params)
    sharded_value, sharded_grad = jax.jit(jax.value_and_grad(sharded))(padded)
    np.testing.assert_allclose(sharded_value, value, rtol=1e-13)
    for name, expected, got in zip(model.Params._fields, grad, sharded.from_sharded(sharded_grad)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=name)
    padding = np.setdiff1d(np.arange(padded.z_alpha.shape[0]), sharded.group_slots)
    assert np.all(np.asarray(sharded_grad.z_alpha)[padding] == 0)
    assert np.all(np.asarray(sharded_grad.z_gamma)[padding] == 0)
    information = sharded.from_sharded(sharded.fisher_diagonal(padded))
    for name, expected, got in zip(model.Params._fields, model.fisher_diagonal(params, dataset), information):
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)


def test_gradient_is_the_hand_written_one_and_stays_sharded():
    dataset = uneven_problem(1, 23)
    sharded = sharding.make_sharded_logdensity(dataset, DEVICES)
    padded = sharded.to_sharded(model.init_params(jax.random.key(0), dataset))
    jaxpr = str(jax.make_jaxpr(sharded.log_likelihood)(padded))
    assert "custom_vjp_call" in jaxpr and "shard_map" in jaxpr
    grad = jax.jit(jax.grad(sharded))(padded)
    for leaf in (padded.z_alpha, padded.z_gamma, grad.z_alpha, grad.z_gamma):
        assert leaf.sharding.spec[0] == sharding.AXIS
    assert grad.alpha.sharding.is_fully_replicated and grad.beta.sharding.is_fully_replicated


def even_problem():
    """16 groups of 30 rows: four equal shards, so no padding group and the sampler sees the
    single-device vector, coordinate for coordinate."""
    rng = np.random.default_rng(0)
    group_idx = np.repeat(np.arange(16), 30)
    return hblogit.Dataset(rng.normal(size=(480, 2)), rng.integers(0, 2, 480), group_idx)


@pytest.fixture(scope="module")
def nuts_runs():
    dataset = even_problem()
    config = runner.RunConfig(chains=2, warmup=10, draws=10, seed=1, keep_groups=(0, 5, 15), chunk_size=10, init_steps=20, progress=False)
    nuts = get_sampler("nuts", initial_step_size=0.1)
    sharded = sharding.make_sharded_logdensity(dataset, DEVICES)
    assert sharded.padding_groups == 0
    return runner.run(nuts, model.make_logdensity(dataset), config), runner.run(nuts, sharded, config)


def test_nuts_on_four_devices_gives_the_single_device_draws(nuts_runs):
    """To rounding, not bitwise: the psum adds the shards' partial sums in another order,
    and NUTS amplifies that last-bit difference (1e-16 at the start, ~1e-7 after 20 steps)."""
    single, sharded = nuts_runs
    np.testing.assert_array_equal(sharded.sample_stats["n_steps"], single.sample_stats["n_steps"])
    for name in single.draws:
        np.testing.assert_allclose(sharded.draws[name], single.draws[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name in single.group_mean:
        np.testing.assert_allclose(sharded.group_mean[name], single.group_mean[name], rtol=1e-5, atol=1e-6)


def test_runner_keeps_the_group_sharding(nuts_runs):
    _, sharded = nuts_runs
    final = sharded.final_positions
    assert final.z_alpha.sharding.spec == GROUP_SPEC and final.z_gamma.sharding.spec == GROUP_SPEC
    assert final.alpha.sharding.is_fully_replicated


def test_cli_fits_on_four_devices(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {"bought": rng.integers(0, 2, n), "store": rng.choice(list("abcdefghij"), n), "price": rng.normal(size=n)}
    )
    frame.to_csv(tmp_path / "sales.csv", index=False)
    command = [sys.executable, "-m", "hblogit.fit", "--data", str(tmp_path / "sales.csv"), "--outcome", "bought",
               "--group", "store", "--devices", "4", "--chains", "2", "--warmup", "30", "--draws", "20",
               "--no-progress", "--out", str(tmp_path / "run")]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["devices"] == 4 and record["device"].endswith("x 4")
    import xarray as xr

    tree = xr.open_datatree(tmp_path / "run" / "posterior.nc")
    assert list(tree["group_moments"]["group"].values) == list("abcdefghij")
    assert np.all(np.isfinite(tree["group_moments"]["alpha_group_mean"].values))
