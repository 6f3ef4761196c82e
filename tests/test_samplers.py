"""Every registered sampler: agreement with the PyMC reference posterior, honest gradient
counts, the command line; and the extension point, with a toy sampler defined here."""

from __future__ import annotations

import importlib
import importlib.util
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import hblogit
from hblogit.fit import main
from hblogit.samplers import SAMPLERS, base, get_sampler, register
from tests.test_fit import assert_agrees_with_reference, reference  # noqa: F401  (fixture)
from tests.toy_samplers import RandomWalk

# Run lengths per sampler: as short as the agreement check allows. nuts is checked by
# tests/test_fit.py. thin > 1 where a step is cheap (one to a few gradients), so that a
# kept draw costs about what a NUTS draw does.
AGREEMENT = {
    "hmc": dict(chains=4, warmup=400, draws=400),
    "mclmc": dict(chains=4, warmup=1000, draws=500, thin=4),
    "mams": dict(chains=4, warmup=1000, draws=500, thin=2),
    "chees": dict(chains=16, warmup=600, draws=150, thin=2),
    "meads": dict(chains=16, warmup=400, draws=100, thin=4),
    "numpyro-nuts": dict(chains=4, warmup=400, draws=400),
    "gibbs": dict(chains=4, warmup=300, draws=300),
}
MCLMC_BIAS_SD = 0.05  # allowance for unadjusted MCLMC's bias: 5% of the posterior sd


def test_every_registered_sampler_is_checked():
    assert set(SAMPLERS) == set(AGREEMENT) | {"nuts"}


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_sampler_agrees_with_pymc_reference(name, reference):  # noqa: F811
    idata = hblogit.fit(reference.data.dataset(), sampler=name, seed=3, progress=False, **AGREEMENT[name])
    widen = (lambda _, sd: MCLMC_BIAS_SD * sd) if name == "mclmc" else None
    assert_agrees_with_reference(idata, reference, widen=widen)


# -- the command line for every sampler, counting gradients --------------------------------------------------------------------

_COUNT = [0]


def _add(cotangent):
    _COUNT[0] += int(np.size(cotangent))


@jax.custom_vjp
def _count_gradients(params):
    """The identity; each backward pass through it (one per gradient evaluation of the
    log-density, per chain) adds to ``_COUNT``."""
    return params


def _count_fwd(params):
    return params, None


def _count_bwd(_, cotangent):
    jax.debug.callback(_add, cotangent.alpha)
    return (cotangent,)


_count_gradients.defvjp(_count_fwd, _count_bwd)


class CountingLogDensity(eqx.Module):
    """Counts the gradients of the density itself; what the runner asks of a parameter space
    besides (starts, the density's parts, the information diagonal) is passed through."""

    inner: hblogit.model.LogDensity

    @property
    def dataset(self):
        return self.inner.dataset

    @property
    def data(self):
        return self.inner.data

    def __call__(self, params):
        return self.inner(_count_gradients(params))

    def init_params(self, key, dtype=None):
        return self.inner.init_params(key, dtype)

    def log_prior(self, params):
        return self.inner.log_prior(params)

    def log_likelihood(self, params):
        return self.inner.log_likelihood(params)

    def fisher_diagonal(self, params):
        return self.inner.fisher_diagonal(params)


def _counted():
    jax.effects_barrier()
    return _COUNT[0]


# Chains per sampler: one where chains take different numbers of steps (under vmap a
# finished chain's lane keeps computing, masked, so the callback would count gradients the
# algorithm did not spend); ensemble samplers move in lockstep and need several chains.
CHAINS = {"nuts": 1, "hmc": 2, "mclmc": 2, "mams": 1, "chees": 4, "meads": 8, "numpyro-nuts": 1, "gibbs": 1}
INIT_STEPS = 200  # hblogit.fit's Adam steps toward the mode per chain, before the sampler


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_cli_runs_every_sampler_and_its_gradient_counts_are_honest(name, tmp_path, tiny_preset, monkeypatch):
    """``python -m hblogit.fit --sampler NAME`` with a log-density that counts its gradient
    evaluations: the count equals the starting points' Adam steps, one gradient per chain
    at the finite-start check and one at the sampler's init, and the n_steps reported by
    every warm-up and sampling step."""
    assert set(CHAINS) == set(SAMPLERS)
    fit_module = importlib.import_module("hblogit.fit")  # the attribute hblogit.fit is the function
    monkeypatch.setattr(fit_module, "make_logdensity", lambda dataset, layout="auto": CountingLogDensity(hblogit.make_logdensity(dataset, layout=layout)))
    chains = CHAINS[name]
    args = ["--preset", "small", "--sampler", name, "--chains", str(chains), "--warmup", "16", "--draws", "8"]
    _COUNT[0] = 0
    assert main([*args, "--no-progress", "--out", str(tmp_path)]) == 0
    spent = _counted()
    tree = xr.open_datatree(tmp_path / "posterior.nc")
    reported = int(tree["warmup_sample_stats"]["n_steps"].sum()) + int(tree["sample_stats"]["n_steps"].sum())
    assert int(tree["sample_stats"]["n_steps"].sum()) > 0
    assert spent == INIT_STEPS * chains + 2 * chains + reported
    assert json.loads((tmp_path / "run.json").read_text())["config"]["sampler"] == name


def test_a_new_sampler_registers_and_runs_through_the_cli(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setattr(base, "SAMPLERS", dict(base.SAMPLERS))  # leave the registry as found
    register("toy")(RandomWalk)
    args = ["--preset", "small", "--sampler", "toy", "--sampler-opt", "scale=0.1", "--chains", "2", "--warmup", "10", "--draws", "40"]
    assert main([*args, "--no-progress", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["sampler"] == "toy" and record["config"]["sampler_options"] == {"scale": 0.1}
    acceptance = xr.open_datatree(tmp_path / "posterior.nc")["sample_stats"]["acceptance_rate"].values
    assert 0.0 < acceptance.mean() < 1.0


def test_a_sampler_refuses_a_size_it_cannot_hold():
    """mclmc with phase 3 on at the post's size keeps 100 positions a chain: ~80 GB for 8."""
    positions = jax.ShapeDtypeStruct((8, 2_100_042), jnp.float64)
    sampler = get_sampler("mclmc", frac_tune3=0.1)
    with pytest.raises(ValueError, match=r"'mclmc' needs about \d+ GB .* more than an 80 GB card"):
        jax.eval_shape(lambda p: sampler.init(p, None, 1000, p), positions)


@pytest.mark.parametrize("chains", [6, 4])
def test_meads_refuses_chain_counts_its_folds_cannot_use(chains):
    """4 folds: 6 chains do not divide, 4 leave one chain a fold, whose spread is 0."""
    positions = jax.ShapeDtypeStruct((chains, 10), jnp.float64)
    with pytest.raises(ValueError, match=r"divisible by num_folds = 4 and at least 2 a fold"):
        jax.eval_shape(lambda p: get_sampler("meads").init(p, None, 100, p), positions)


@pytest.mark.parametrize("name", ["nuts", "hmc"])
def test_sequential_chains_draw_what_vmapped_chains_draw(name):
    """The chain method changes how the chains are scheduled, not what they draw: the same keys
    reach the same chains. The scale moves are off: their sums over groups round differently
    under vmap (1e-17), and 60 NUTS transitions amplify that past any tight tolerance."""
    dataset = hblogit.simulate(300, 12, 2, seed=5).dataset()
    draws = {
        method: hblogit.fit(
            dataset, sampler=name, chains=3, warmup=30, draws=30, seed=1, progress=False,
            sampler_options={"chain_method": method, "interweave": False, "transport": False},
        ).posterior
        for method in ("vmap", "sequential")
    }
    for variable in ("alpha", "beta", "sigma_gamma"):
        np.testing.assert_allclose(draws["sequential"][variable].values, draws["vmap"][variable].values, rtol=1e-9, atol=1e-12)


def test_chain_method_auto_and_bad_values():
    position = jnp.zeros((4, 10))
    assert get_sampler("nuts").sequential(position)  # on a CPU, NUTS runs chains one by one
    assert not get_sampler("hmc").sequential(position)
    assert not get_sampler("nuts", chain_method="vmap").sequential(position)
    with pytest.raises(ValueError, match="chain_method"):
        get_sampler("nuts", chain_method="parallel")


@pytest.mark.parametrize(
    "name,option,value,message",
    [
        ("nuts", "max_num_doublings", "ten", "max_num_doublings must be a positive integer, got 'ten'"),
        ("nuts", "target_acceptance_rate", 1.5, r"target_acceptance_rate must be a number in \(0, 1\)"),
        ("gibbs", "initial_step_size", -0.1, "initial_step_size must be a number in"),
        ("hmc", "num_integration_steps", 0, "num_integration_steps must be a positive integer"),
        ("hmc", "transport_passes", 2.0, "transport_passes must be a positive integer, got 2.0"),
        ("mclmc", "frac_tune1", -0.1, r"frac_tune1 must be a number in \[0, 1\]"),
        ("mclmc", "pilot_steps", 0, "pilot_steps must be a positive integer"),
        ("mclmc", "desired_energy_var", float("nan"), "desired_energy_var must be a number in"),
        ("mams", "num_integration_steps", 0, "num_integration_steps must be a number in"),
        ("chees", "max_leapfrog_steps", 0, "max_leapfrog_steps must be a positive integer"),
        ("meads", "num_folds", 0, "num_folds must be a positive integer"),
        ("meads", "damping_slowdown", True, "damping_slowdown must be a number in"),
        ("numpyro-nuts", "max_tree_depth", 0, "max_tree_depth must be a positive integer"),
    ],
)
def test_a_bad_sampler_option_is_refused_naming_it(name, option, value, message):
    """Before any compilation, with the option's name: not a traceback from deep in a trace."""
    with pytest.raises(ValueError, match=message):
        get_sampler(name, **{option: value})


@pytest.mark.parametrize("name", ["nuts", *AGREEMENT])
def test_every_sampler_accepts_its_own_defaults(name):
    assert get_sampler(name).name == name


def test_numpyro_nuts_without_numpyro_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numpyro" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'hblogit\[numpyro\]'"):
        get_sampler("numpyro-nuts")


@pytest.mark.parametrize("name, drawn", [("mams", ("random_generator_arg",)), ("mclmc", ("momentum",)), ("meads", ("momentum", "slice"))])
def test_what_init_draws_is_drawn_again_from_the_run_key(name, drawn):
    """``init`` gets no key, so these samplers' ``_init`` draw their chains' momenta (or MAMS's
    trajectory-length stream) from a fixed one: warm-up must draw them again from the run's
    key, or every seed starts from the same ones. The rest of the chain stays."""
    logdensity = hblogit.make_logdensity(hblogit.simulate(300, 12, 2, seed=1).dataset())
    positions = jax.vmap(logdensity.init_params)(jax.random.split(jax.random.PRNGKey(0), 8))
    sampler = get_sampler(name)
    chain = sampler.init(positions, logdensity, 10, jnp.ones((8, logdensity.dataset.num_params))).chain
    first, second, second_again = (sampler._seeded(jax.random.key(seed), chain) for seed in (1, 2, 2))

    def values(state, field):  # one array, chains first
        leaves = jax.tree.leaves(getattr(state, field))
        if jax.dtypes.issubdtype(leaves[0].dtype, jax.dtypes.prng_key):
            leaves = [jax.random.key_data(leaf) for leaf in leaves]
        return np.concatenate([np.reshape(leaf, (8, -1)) for leaf in leaves], axis=1)

    for field in chain._fields:
        if field in drawn:
            assert not np.array_equal(values(first, field), values(chain, field)), field
            assert not np.array_equal(values(first, field), values(second, field)), field
            assert np.array_equal(values(second, field), values(second_again, field)), field
            assert not np.array_equal(values(first, field)[0], values(first, field)[1]), field  # chains differ
        else:
            assert np.array_equal(values(first, field), values(chain, field)), field
