"""hblogit.fit against the committed PyMC reference posterior, and the run's other promises."""

import importlib

import jax
import numpy as np
import pytest

import hblogit
from reference.posterior import load_reference, scalar_names, truth_scalars

MAX_Z = 5.0


def global_scalars(idata) -> dict[str, np.ndarray]:
    """name -> (chain, draw) draws, keyed like the reference ('beta[0]', ...)."""
    posterior = idata["posterior"]
    out = {}
    for name in ("alpha", "beta", "sigma_alpha", "sigma_gamma"):
        values = posterior[name].values
        if values.ndim == 2:
            out[name] = values
        else:
            for k in range(values.shape[-1]):
                out[f"{name}[{k}]"] = values[..., k]
    return out


def assert_agrees_with_reference(idata, reference, max_z=MAX_Z, widen=None):
    """|mean - ref| / sqrt(mcse^2 + ref_se^2) < max_z for every global scalar.

    ``widen(name, sd) -> extra`` adds a known bias allowance (same units as the mean) to the
    denominator, for samplers that are biased by design.
    """
    import arviz as az

    draws = global_scalars(idata)
    failures = []
    for name, (ref_mean, ref_sd, ref_se) in reference.moments.items():
        samples = draws[name]
        mcse = float(az.mcse(samples))
        scale = np.sqrt(mcse**2 + ref_se**2 + (widen(name, ref_sd) ** 2 if widen else 0.0))
        z = (samples.mean() - ref_mean) / scale
        if not abs(z) < max_z:
            failures.append(f"{name}: mean {samples.mean():.4f} vs {ref_mean:.4f}, z = {z:.1f}")
    assert not failures, failures


@pytest.fixture(scope="module")
def reference():
    return load_reference("small")


@pytest.fixture(scope="module")
def nuts_fit(reference):
    return hblogit.fit(reference.data.dataset(), chains=4, warmup=1000, draws=1000, seed=1, progress=False)


def test_nuts_agrees_with_pymc_reference(nuts_fit, reference):
    assert_agrees_with_reference(nuts_fit, reference)


def test_nuts_converges_without_divergences(nuts_fit):
    table = hblogit.results.summary(nuts_fit)
    assert float(table["r_hat"].max()) < 1.01
    assert int(nuts_fit["sample_stats"]["diverging"].sum()) == 0


def test_intervals_cover_the_truth():
    """89% intervals on simulated data: each covers with probability ~0.89, so of the
    2K + 2 = 18 globals at least 12 must (the binomial chance of fewer is about 0.3%)."""
    sim = hblogit.simulate(num_obs=8000, num_groups=400, num_covariates=8, seed=3)
    idata = hblogit.fit(sim.dataset(), chains=2, warmup=300, draws=300, seed=2, progress=False)
    draws = global_scalars(idata)
    truth = truth_scalars(sim.truth)
    covered = []
    for name in scalar_names(8):
        low, high = np.quantile(draws[name], [0.055, 0.945])
        covered.append(low <= truth[name] <= high)
    assert sum(covered) >= 12, dict(zip(scalar_names(8), covered))


def tiny_fit(**kwargs):
    sim = hblogit.simulate(num_obs=300, num_groups=12, num_covariates=2, seed=5)
    options = dict(chains=2, warmup=30, draws=20, seed=7, progress=False, chunk_size=8)
    return hblogit.fit(sim.dataset(), **{**options, **kwargs})


def test_same_seed_same_draws():
    first, second = tiny_fit(), tiny_fit()
    for name in ("alpha", "beta", "sigma_gamma", "gamma_group"):
        np.testing.assert_array_equal(first["posterior"][name].values, second["posterior"][name].values)
    np.testing.assert_array_equal(first["sample_stats"]["lp"].values, second["sample_stats"]["lp"].values)
    different = tiny_fit(seed=8)
    assert not np.array_equal(first["posterior"]["alpha"].values, different["posterior"]["alpha"].values)


def test_float32_runs_with_x64_on():
    """The suite runs with JAX's x64 mode on, as a process does after any mixed-precision fit;
    a float32 fit must still run, in float32."""
    idata = tiny_fit(precision="float32")
    assert idata["posterior"]["alpha"].dtype == np.float32 and idata["sample_stats"]["lp"].dtype == np.float32
    assert np.all(np.isfinite(idata["posterior"]["beta"].values))
    assert jax.config.jax_enable_x64  # and the mode is as it was


def test_run_keeps_no_full_parameter_vector_per_draw():
    """Per draw: the globals, the kept groups and scalar stats; every group only as moments."""
    idata = tiny_fit(keep_groups=[0, 3, 11], thin=2)
    posterior = idata["posterior"]
    assert dict(posterior.sizes) == {"chain": 2, "draw": 20, "covariate": 2, "kept_group": 3}
    assert posterior["gamma_group"].shape == (2, 20, 3, 2)
    assert all(v.shape == (2, 20) for v in idata["sample_stats"].data_vars.values())
    moments = idata["group_moments"]
    assert moments["gamma_group_mean"].shape == (12, 2) and moments["alpha_group_sd"].shape == (12,)
    assert "group" not in posterior.dims
    # thinning: every kept draw spent the gradients of two steps
    assert int(idata["sample_stats"]["n_steps"].min()) >= 2


def test_streamed_group_moments_match_kept_draws():
    idata = tiny_fit(keep_groups=[1, 4], draws=40)
    kept = idata["posterior"]["alpha_group"].values  # (chain, draw, 2)
    moments = idata["group_moments"]
    np.testing.assert_allclose(moments["alpha_group_mean"].values[[1, 4]], kept.mean(axis=(0, 1)), rtol=1e-10)
    np.testing.assert_allclose(moments["alpha_group_sd"].values[[1, 4]], kept.reshape(-1, 2).std(axis=0, ddof=0), rtol=0.05)


def test_run_record_and_coords():
    idata = tiny_fit()
    record = importlib.import_module("hblogit.fit").run_record(idata)
    assert record["config"]["chains"] == 2 and record["config"]["sampler"] == "nuts"
    assert {"compile_warmup_s", "warmup_s", "sampling_s"} <= set(record["timings"])
    assert record["versions"]["jax"] and record["device"].startswith("cpu")
    assert record["config"]["layout"] == "segment"  # "auto" on this small data, as run
    assert list(idata["posterior"]["beta"].coords["covariate"].values) == ["x0", "x1"]


def test_fit_is_the_function_and_the_module_runs():
    module = importlib.import_module("hblogit.fit")
    from hblogit.fit import main

    assert callable(hblogit.fit) and not isinstance(hblogit.fit, type(module))
    assert hblogit.fit is module.fit and callable(main)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(chains=0), "chains"),
        (dict(chains=2.0), "chains must be a positive integer, got 2.0"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(devices=0), "devices must be a positive integer"),
        (dict(draws=0), "draws"),
        (dict(sampler="nope"), "unknown sampler 'nope'"),
        (dict(keep_groups=[99]), "keep_groups"),
        (dict(precision="half"), "precision"),
        (dict(sampler_options={"bogus": 1}), "bad option for sampler 'nuts'"),
        (dict(layout="dense"), "layout must be one of"),
        (dict(layout="blocked", devices=2), "layout='blocked' is for one device"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_fit(**kwargs)
