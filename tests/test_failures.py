"""Failure modes in sampling: each is reported with counts and where it happened, and never
corrupts a run silently (issue: trust)."""

import jax.numpy as jnp
import numpy as np
import pytest

import hblogit
from hblogit import results, runner
from hblogit.cli import cli_errors
from hblogit.model import LogDensity, make_logdensity
from hblogit.samplers import SAMPLERS, get_sampler
from hblogit.samplers.nuts import NUTS
from tests.toy_samplers import UnadjustedLangevin


@pytest.fixture(scope="module")
def dataset():
    return hblogit.simulate(num_obs=300, num_groups=10, num_covariates=2, seed=3).dataset()


class NaNAbove(LogDensity):
    """The model's density, but NaN wherever alpha exceeds ``threshold``: a density that
    fails in part of the space, as a user's modified model might."""

    threshold: float = 0.0

    def __call__(self, params):
        return jnp.where(params.alpha > self.threshold, jnp.nan, super().__call__(params))


def nan_above(dataset, threshold) -> NaNAbove:
    inner = make_logdensity(dataset)
    return NaNAbove(inner.dataset, inner.data, threshold)


CONFIG = runner.RunConfig(chains=2, warmup=150, draws=150, chunk_size=50, progress=False)


@pytest.fixture(scope="module")
def start_and_region(dataset):
    """Starting points found on the model's density, and a NaN region just above the highest
    starting alpha: every chain starts outside it, and the posterior of alpha (whose sd the
    starts' Laplace jitter matches) puts much of its mass inside it."""
    keys = runner.run_keys(CONFIG.seed)
    start = runner.starting_points(keys.init, make_logdensity(dataset), CONFIG.chains, CONFIG.init_steps, CONFIG.init_learning_rate, jnp.float64)
    return start, nan_above(dataset, float(start.positions.alpha.max()) + 0.05)


class OversizedStepNUTS(NUTS):
    """NUTS whose tuned step size is multiplied by 20 after warm-up: a deliberately bad step."""

    def finish_warmup(self, state):
        tuned = super().finish_warmup(state)
        return tuned._replace(step_size=20.0 * tuned.step_size)


@pytest.fixture
def oversized_step_sampler():
    SAMPLERS["nuts-oversized-step"] = OversizedStepNUTS
    yield "nuts-oversized-step"
    del SAMPLERS["nuts-oversized-step"]


def test_divergences_are_counted_per_chain_with_the_first_draw(dataset, oversized_step_sampler):
    idata = hblogit.fit(dataset, sampler=oversized_step_sampler, chains=2, warmup=150, draws=100, progress=False)
    diverging = idata["sample_stats"]["diverging"].values
    verdict = results.diagnose(idata, results.summary(idata))
    assert verdict.divergences == diverging.sum() > 0
    assert verdict.divergences_by_chain == diverging.sum(axis=1).tolist()
    chain, draw = verdict.first_divergence
    assert diverging[chain, draw] and not diverging[:, :draw].any()
    message = next(w for w in verdict.warnings if "divergent" in w)
    assert f"{verdict.divergences} divergent" in message
    assert f"per chain {verdict.divergences_by_chain}" in message and f"first at draw {draw} of chain {chain}" in message
    for name in results.GLOBALS:
        assert np.isfinite(idata["posterior"][name].values).all()


@pytest.mark.parametrize("name", ["nuts", "mclmc"])
def test_a_nan_region_is_rejected_and_reported_as_divergences(start_and_region, name):
    """NUTS rejects a NaN proposal as divergent; BlackJAX's MCLMC reverts a step that meets a
    NaN and reports it (``nonans``), which hblogit counts as a divergence. Either way the
    draws stay outside the region, and every kept draw is finite."""
    start, density = start_and_region
    result = runner.run(get_sampler(name), density, CONFIG, dtype=jnp.float64, start=start)
    alpha = result.draws["alpha"]
    assert np.isfinite(alpha).all() and (alpha <= density.threshold).all()
    assert np.isfinite(result.sample_stats["lp"]).all()
    assert result.sample_stats["diverging"].sum() + result.warmup_sample_stats["diverging"].sum() > 0


def test_a_sampler_entering_a_nan_region_stops_the_run_naming_chain_and_step(start_and_region):
    start, density = start_and_region
    with pytest.raises(runner.SamplingError, match=r"non-finite in chain\(s\) \[.*\], first at (warm-up step|draw) \d+"):
        runner.run(UnadjustedLangevin(), density, CONFIG, dtype=jnp.float64, start=start)


def test_a_density_not_finite_at_the_start_is_named(dataset):
    everywhere = nan_above(dataset, -jnp.inf)
    with pytest.raises(ValueError, match=r"log-density or its gradient is not finite at the starting point of chain\(s\) \[0, 1\]"):
        runner.run(get_sampler("nuts"), everywhere, CONFIG, dtype=jnp.float64)


def test_check_finite_chains_names_chains_and_first_step():
    lp = np.zeros((3, 5))
    lp[2, 3] = np.nan
    lp[1, 4] = -np.inf
    with pytest.raises(runner.SamplingError, match=r"chain\(s\) \[1, 2\], first at draw 103 \(2 non-finite"):
        runner.check_finite_chains(lp, "sampling", 100)
    runner.check_finite_chains(np.zeros((3, 5)), "warmup", 0)


def test_the_cli_reports_a_sampling_error_in_one_line_with_exit_status_1(capsys):
    @cli_errors
    def main(argv=None) -> int:
        raise runner.SamplingError("the log-density became non-finite in chain(s) [0],\nfirst at draw 7")

    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the log-density became non-finite") and "Traceback" not in err


def test_no_warm_up_samples_with_the_initial_step_size(dataset):
    idata = hblogit.fit(dataset, chains=2, warmup=0, draws=20, progress=False, sampler_options={"initial_step_size": 0.05})
    assert np.all(idata["sample_stats"]["step_size"].values == 0.05)
    assert np.isfinite(idata["posterior"]["alpha"].values).all()
