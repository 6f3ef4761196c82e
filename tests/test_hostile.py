"""Hostile data: each test names a case that real data brings and states what hblogit does with
it, a correct answer or a clear message, never a silent NaN.

Fits are short (2 chains, 150 warm-up steps, 150 draws) by static HMC, which compiles in
half of NUTS's time; no test here is about the sampler, and the data, runner and results code
they exercise is the same for every sampler. Each new data shape (or labelling: labels are
static in the Dataset pytree) compiles the sampler again, 5-15 s of CPU, while a repeated one
costs a fraction of a second, so the fits share five shapes: ``problem``'s (which is also the
K = 1 case), G = 1, G = K = 1, K = 0 (random intercepts only), and the labelled table's.
"""

import contextlib
import io
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import hblogit
from hblogit import CovariateWarning
from hblogit.fit import main, run_record
from hblogit.model import Params, log_likelihood, log_prior, logdensity_autodiff
from tests import numpy_model
from tests.conftest import random_problem

SHORT = dict(sampler="hmc", chains=2, warmup=150, draws=150, seed=0, progress=False)
LAYOUTS = ("segment", "blocked")


@jax.jit
def hand_value_and_grad(density, params):
    """``make_logdensity``'s value and hand-written gradient, one compile per data shape."""
    return jax.value_and_grad(density)(params)


autodiff_grad = jax.jit(jax.grad(logdensity_autodiff))
likelihood_and_grad = jax.jit(jax.value_and_grad(log_likelihood))


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def posterior_is_finite(idata) -> bool:
    posterior = idata["posterior"]
    return all(bool(np.all(np.isfinite(posterior[name].values))) for name in posterior.data_vars)


def assert_gradients_close(ours: Params, reference: Params, rtol: float) -> None:
    """Every block within ``rtol`` of the largest reference entry."""
    scale = max(float(jnp.max(jnp.abs(block), initial=0)) for block in reference)
    for name, a, b in zip(Params._fields, ours, reference):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b), rtol=0, atol=rtol * scale, err_msg=name)


NUM_OBS = 60  # the rows of every fitted problem, so that fits of one (G, K) share a compile


# --- Complete separation -------------------------------------------------------------------

SEPARATED = (0, 1)  # groups in which every outcome is 1


@pytest.fixture(scope="module")
def problem():
    """60 rows, 4 groups (each with rows), 1 covariate, float64; random outcomes."""
    return random_problem(11, num_obs=NUM_OBS, num_groups=4, num_covariates=1, empty_group=False)


@pytest.fixture(scope="module")
def separated(problem):
    """``problem`` with every outcome of groups 0 and 1 set to 1: their intercepts have no MLE."""
    X, y, g = problem
    return X, np.where(np.isin(g, SEPARATED), 1, y), g


def test_separated_groups_density_is_finite_and_below_the_prior(separated):
    """Pushing the separated groups' z_alpha to +inf raises the log-likelihood towards its
    supremum 0 without reaching a maximum, yet the value and gradient stay finite out to
    z = 1e4 in both layouts, and the log-likelihood stays <= 0: the density is at most the
    (normalised) prior's, so the posterior is proper. Far out the prior's -z^2/2 wins."""
    X, y, g = separated
    dataset = hblogit.Dataset(X, y, g)
    base = hblogit.init_params(jax.random.key(0), dataset, radius=1.0)
    rays = [base._replace(z_alpha=base.z_alpha.at[jnp.array(SEPARATED)].set(t)) for t in (0, 3, 10, 30, 1e2, 1e3, 1e4)]
    for layout in LAYOUTS:
        density = hblogit.make_logdensity(dataset, layout=layout)
        values, likelihoods = [], []
        for params in rays:
            value, grad = hand_value_and_grad(density, params)
            assert all_finite((value, grad)), layout
            values.append(float(value))
            likelihoods.append(float(likelihood_and_grad(params, density.data)[0]))
        assert np.all(np.diff(likelihoods) >= 0) and max(likelihoods) <= 0, (layout, likelihoods)
        assert values[-1] < values[0] - 1e7, layout  # the prior's -z^2/2 is -5e7 for each of two z's


def test_separated_groups_fit_to_positive_bounded_intercepts(separated):
    """A short fit completes with finite draws. Each separated group's intercept
    alpha + alpha_group has a posterior mean above 0 and below log(100 n_g) (7.2 and 7.0 for
    their 13 and 11 rows), by 5 Monte Carlo standard errors.

    Why that bound: the likelihood of n_g ones is prod sigmoid(eta_i) >= 1 - sum exp(-eta_i),
    within 1% of its supremum once the intercept passes log(100 n_g) (slopes aside), and
    beyond that the posterior is the prior's tail (a group intercept's prior sd is
    sqrt(1.5^2 + 1) = 1.8). A flat prior would leave the posterior improper and the chains
    drifting upwards without bound; the measured means are 3.4 and 3.0.
    """
    X, y, g = separated
    idata = hblogit.fit(hblogit.Dataset(X, y, g), **SHORT)  # keeps every one of the 4 groups
    assert posterior_is_finite(idata)
    posterior = idata["posterior"]
    for group in SEPARATED:
        intercept = posterior["alpha"].values + posterior["alpha_group"].sel(kept_group=group).values
        mean, mcse = intercept.mean(), float(az.mcse(intercept))
        bound = np.log(100 * np.sum(g == group))
        assert 0 < mean - 5 * mcse and mean + 5 * mcse < bound, (group, mean, mcse, bound)


def importance_mean_of_alpha(X, group_idx, num_groups, num_draws, seed) -> tuple[float, float]:
    """Posterior mean of alpha when every outcome is 1, and its standard error, by
    self-normalised importance sampling from the prior (weight = likelihood): exact as the
    draws grow, and independent of hblogit."""
    rng = np.random.default_rng(seed)
    num_covariates = X.shape[1]
    alpha = rng.normal(0, 1.5, num_draws)
    beta = rng.normal(0, 1.0, (num_draws, num_covariates))
    sigma_alpha = np.abs(rng.normal(0, 1.0, num_draws))
    sigma_gamma = np.abs(rng.normal(0, 0.5, (num_draws, num_covariates)))
    z_alpha = rng.normal(size=(num_draws, num_groups))
    z_gamma = rng.normal(size=(num_draws, num_groups, num_covariates))
    eta = alpha[:, None] + sigma_alpha[:, None] * z_alpha[:, group_idx]
    for k in range(num_covariates):
        eta += X[:, k] * (beta[:, k, None] + sigma_gamma[:, k, None] * z_gamma[:, group_idx, k])
    log_weight = -np.logaddexp(0.0, -eta).sum(axis=1)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    mean = float(np.sum(weight * alpha))
    return mean, float(np.sqrt(np.sum(weight**2 * (alpha - mean) ** 2)))


def test_all_outcomes_one_fit_matches_importance_sampling(problem):
    """Every outcome 1, so no finite MLE for any intercept: the posterior is still proper,
    and a short fit's mean of alpha agrees with the prior-importance-sampling reference
    (100,000 draws, effective size ~1,000, se ~0.03) within 5 combined standard errors
    (sqrt(MCSE^2 + se^2)), the tolerance of the other posterior tests. The mean is ~3.8."""
    X, _, g = problem
    idata = hblogit.fit(hblogit.Dataset(X, np.ones(len(g), dtype=int), g), **SHORT)
    assert posterior_is_finite(idata)
    alpha = idata["posterior"]["alpha"].values
    reference, reference_se = importance_mean_of_alpha(X, g, num_groups=4, num_draws=100_000, seed=0)
    z = (alpha.mean() - reference) / np.hypot(float(az.mcse(alpha)), reference_se)
    assert abs(z) < 5, (alpha.mean(), reference, z)


def test_float64_X_stays_float64_and_fits_in_float64_and_mixed_precision(problem):
    """Float64 X is kept float64 (not rounded to float32). Both precisions fit with finite
    float64 draws, and they are the same draws: with float64 data, "mixed" has nothing to
    keep in float32, so it runs the same computation as "float64"."""
    X, y, g = problem
    dataset = hblogit.Dataset(X, y, g)
    assert dataset.X.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(dataset.X), X[np.asarray(dataset.order)])
    fits = {precision: hblogit.fit(dataset, precision=precision, **SHORT) for precision in ("float64", "mixed")}
    for precision, idata in fits.items():
        assert posterior_is_finite(idata) and idata["posterior"]["alpha"].dtype == np.float64
        assert run_record(idata)["config"]["precision"] == precision
    for name in ("alpha", "beta", "sigma_alpha", "sigma_gamma"):
        np.testing.assert_array_equal(fits["float64"]["posterior"][name], fits["mixed"]["posterior"][name])


# --- Singleton groups and groups with no rows -----------------------------------------------


def test_singleton_and_empty_groups_density_is_the_sum_of_group_pieces():
    """Groups 1 and 4 have one row each; 2, 5 and 6 have none, 6 beyond the largest label
    (num_groups = 7). In both layouts the value and gradient are finite; the value is the
    prior plus each group's log-likelihood from its own rows (NumPy/SciPy, 0 for an empty
    group) to 1e-12; the gradient is autodiff's to 1e-12 of its scale; and the likelihood's
    gradient for an empty group's z's is exactly 0, so their density gradient is exactly
    -z: they keep their N(0, 1) prior."""
    rng = np.random.default_rng(5)
    g = rng.permutation([0] * 6 + [1] + [3] * 5 + [4])
    num_groups, empty = 7, [2, 5, 6]
    X, y = rng.normal(size=(len(g), 2)), rng.integers(0, 2, len(g))
    dataset = hblogit.Dataset(X, y, g, num_groups=num_groups)
    assert np.asarray(dataset.group_sizes).tolist() == [6, 1, 0, 5, 1, 0, 0]
    params = hblogit.init_params(jax.random.key(1), dataset, radius=1.0)
    expected = numpy_model.log_prior(params) + numpy_model.group_log_likelihoods(params, X, y, g, num_groups).sum()
    autodiff = autodiff_grad(params, dataset)
    for layout in LAYOUTS:
        density = hblogit.make_logdensity(dataset, layout=layout)
        value, grad = hand_value_and_grad(density, params)
        assert all_finite((value, grad))
        np.testing.assert_allclose(float(value), expected, rtol=1e-12)
        assert_gradients_close(grad, autodiff, rtol=1e-12)
        _, likelihood_grad = likelihood_and_grad(params, density.data)
        assert np.all(np.asarray(likelihood_grad.z_alpha)[empty] == 0)
        assert np.all(np.asarray(likelihood_grad.z_gamma)[empty] == 0)
        np.testing.assert_array_equal(np.asarray(grad.z_alpha)[empty], -np.asarray(params.z_alpha)[empty])
        np.testing.assert_array_equal(np.asarray(grad.z_gamma)[empty], -np.asarray(params.z_gamma)[empty])


# --- One group, one covariate, no covariates -------------------------------------------------

SMALL_SHAPES = pytest.mark.parametrize(
    "num_groups,num_covariates", [(1, 3), (4, 1), (1, 1), (4, 0)], ids=["G=1", "K=1", "G=1,K=1", "K=0"]
)


def small_problem(num_groups, num_covariates):
    return random_problem(20, num_obs=NUM_OBS, num_groups=num_groups, num_covariates=num_covariates, empty_group=False)


@SMALL_SHAPES
def test_one_group_or_one_covariate_matches_pymc(num_groups, num_covariates):
    """The Dataset has the sizes asked for; in float64, both layouts give PyMC's
    compile_logp value to 1e-10 relative and its compile_dlogp gradient to 1e-8 of the
    largest entry (test_model's tolerances)."""
    from reference.model import build_model, params_to_point, split_gradient

    X, y, g = small_problem(num_groups, num_covariates)
    dataset = hblogit.Dataset(X, y, g)
    assert (dataset.num_groups, dataset.num_covariates) == (num_groups, num_covariates)
    assert dataset.num_params == 2 + 2 * num_covariates + num_groups * (1 + num_covariates)
    model = build_model(X, y, g, num_groups=num_groups)
    params = hblogit.init_params(jax.random.key(2), dataset, radius=1.0)
    point = params_to_point(params)
    reference_value = float(model.compile_logp()(point))
    reference_grad = Params(**split_gradient(model, model.compile_dlogp()(point)))
    for layout in LAYOUTS:
        value, grad = hand_value_and_grad(hblogit.make_logdensity(dataset, layout=layout), params)
        assert abs(float(value) - reference_value) <= 1e-10 * abs(reference_value), layout
        assert_gradients_close(grad, reference_grad, rtol=1e-8)


@SMALL_SHAPES
def test_one_group_or_one_covariate_fits(num_groups, num_covariates):
    """A short fit completes with finite draws, K covariates and G groups in its output."""
    X, y, g = small_problem(num_groups, num_covariates)
    idata = hblogit.fit(hblogit.Dataset(X, y, g), **SHORT)
    assert posterior_is_finite(idata)
    assert idata["posterior"]["beta"].shape == (2, 150, num_covariates)
    assert idata["group_moments"]["alpha_group_mean"].shape == (num_groups,)


# --- Constant and huge covariates -----------------------------------------------------------


def covariate_warnings(X, names=None) -> list[str]:
    """The CovariateWarning messages of building a Dataset from ``X`` (random y and groups)."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hblogit.Dataset(X, rng.integers(0, 2, len(X)), rng.integers(0, 3, len(X)), covariate_names=names)
    return [str(w.message) for w in caught if issubclass(w.category, CovariateWarning)]


NAMED = pytest.mark.parametrize("names,name", [(["age", "odd", "dose"], "'odd'"), (None, "'x1'")], ids=["named", "unnamed"])


@NAMED
@pytest.mark.parametrize(
    "value,says",
    [(1.0, "duplicates the intercept alpha"), (0.0, "adds nothing"), (1e6, "duplicates the intercept alpha")],
    ids=["ones", "zeros", "huge-constant"],
)
def test_constant_covariate_warns_naming_it(names, name, value, says):
    """One warning, for the constant column only, by its name (x<k> without names): an
    intercept-like column duplicates alpha, a zero column adds nothing; drop it. A huge
    constant is reported as constant, not twice."""
    X = np.random.default_rng(1).normal(size=(50, 3))
    X[:, 1] = value
    [message] = covariate_warnings(X, names)
    assert name in message and says in message and "drop it" in message


@NAMED
def test_huge_covariate_warns_naming_it_and_suggesting_standardising(names, name):
    """A column a million times the others' scale: one warning, naming it, saying to standardise."""
    X = np.random.default_rng(2).normal(size=(50, 3))
    X[:, 1] *= 1e6
    [message] = covariate_warnings(X, names)
    assert name in message and "standardise" in message


def test_huge_covariate_threshold_is_a_root_mean_square_of_1e3():
    """|x| = 999 on every row passes, 1001 warns; an offset counts (a year, 2000 +- 10, warns)."""
    rng = np.random.default_rng(3)
    signs = rng.choice([-1.0, 1.0], size=40)
    ordinary = rng.normal(size=40)
    assert covariate_warnings(np.column_stack([ordinary, 999 * signs])) == []
    assert len(covariate_warnings(np.column_stack([ordinary, 1001 * signs]))) == 1
    assert len(covariate_warnings(np.column_stack([ordinary, 2000 + 10 * rng.normal(size=40)]))) == 1


@pytest.mark.parametrize("num_obs,num_groups,num_covariates", [(1, 1, 3), (200, 10, 4), (20_000, 1000, 20)])
def test_simulated_data_gives_no_covariate_warning(num_obs, num_groups, num_covariates):
    """hblogit.simulate's standard-normal covariates pass; a single row is not judged constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovariateWarning)
        hblogit.simulate(num_obs=num_obs, num_groups=num_groups, num_covariates=num_covariates).dataset()


def test_load_table_warns_naming_the_file_column(tmp_path):
    """Through the loader, the warning names the column as the file does."""
    rng = np.random.default_rng(4)
    path = tmp_path / "d.csv"
    pd.DataFrame({"y": rng.integers(0, 2, 20), "shop": rng.integers(0, 3, 20), "income": 1e6 * rng.normal(size=20)}).to_csv(
        path, index=False
    )
    with pytest.warns(CovariateWarning, match="'income'.*standardise"):
        hblogit.load_table(path, "y", "shop")


# --- |eta| in the thousands -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_predictor_in_the_thousands(dtype):
    """A covariate of scale 2500 (which warns) with O(1) parameters: |eta| ~ 5000, so rows
    have log-probability 0 or about -|eta|, and exp(|eta|) overflows either float. Both
    layouts: value and gradient finite. Float64: the value is the NumPy reference to 1e-12
    and the gradient autodiff's to 1e-10 of its scale. Float32: within 1e-6 of the value
    and 1e-5 of the gradient's scale (float32's rounding, 6e-8, over a handful of rows)."""
    rng = np.random.default_rng(6)
    g = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    X = np.column_stack([2500 * rng.choice([-1.0, 1.0], size=9), rng.normal(size=9)])
    X[4, 0] = 1e-3  # one row with a moderate eta, so that not every residual is 0 or +-1
    y = rng.integers(0, 2, 9)
    params = Params(
        *(
            jnp.asarray(v, jnp.float64)
            for v in (0.3, [2.0, -0.5], -0.5, [-1.0, 0.0], rng.normal(size=3), rng.normal(size=(3, 2)))
        )
    )
    with pytest.warns(CovariateWarning, match="'x0'"):
        reference_data = hblogit.Dataset(X, y, g)
    eta = np.asarray(params.alpha + jnp.exp(params.log_sigma_alpha) * params.z_alpha)[g] + np.sum(
        X * np.asarray(params.beta + jnp.exp(params.log_sigma_gamma) * params.z_gamma)[g], axis=1
    )
    assert np.sum(np.abs(eta) > 3000) == 8
    expected = numpy_model.log_prior(params) + numpy_model.group_log_likelihoods(params, X, y, g, 3).sum()
    expected_grad = autodiff_grad(params, reference_data)

    with pytest.warns(CovariateWarning):
        dataset = hblogit.Dataset(X.astype(dtype), y, g)
    typed = jax.tree.map(lambda p: p.astype(dtype), params)
    value_rtol, grad_rtol = (1e-12, 1e-10) if dtype == np.float64 else (1e-6, 1e-5)
    for layout in LAYOUTS:
        value, grad = hand_value_and_grad(hblogit.make_logdensity(dataset, layout=layout), typed)
        assert value.dtype == dtype and all_finite((value, grad)), layout
        assert abs(float(value) - expected) <= value_rtol * abs(expected), layout
        assert_gradients_close(grad, expected_grad, rtol=grad_rtol)


# --- Outcome and covariate dtypes -----------------------------------------------------------


def test_int8_and_bool_outcomes_give_the_same_dataset_and_density():
    """y as int8 or bool: the same sorted outcomes and bit-identical log-density as int64."""
    X, y, g = random_problem(7, num_obs=40, num_groups=5, num_covariates=2)
    reference = hblogit.Dataset(X, y, g, num_groups=5)
    params = hblogit.init_params(jax.random.key(3), reference, radius=1.0)
    expected = float(hblogit.make_logdensity(reference)(params))
    for outcome in (y.astype(np.int8), y.astype(bool)):
        dataset = hblogit.Dataset(X, outcome, g, num_groups=5)
        np.testing.assert_array_equal(np.asarray(dataset.y), np.asarray(reference.y))
        assert float(hblogit.make_logdensity(dataset)(params)) == expected


def test_float16_and_integer_X_are_converted_to_float32():
    """X as float16, int8, int32 or int64 becomes float32 holding the same values (all exact
    in float32), with a log-density bit-identical to the float32 array's."""
    rng = np.random.default_rng(8)
    values = rng.integers(-5, 6, size=(30, 2))
    y, g = rng.integers(0, 2, 30), rng.integers(0, 4, 30)
    reference = hblogit.Dataset(values.astype(np.float32), y, g)
    params = hblogit.init_params(jax.random.key(4), reference, radius=1.0, dtype=jnp.float32)
    expected = float(hblogit.make_logdensity(reference)(params))
    for dtype in (np.float16, np.int8, np.int32, np.int64):
        dataset = hblogit.Dataset(values.astype(dtype), y, g)
        assert dataset.X.dtype == jnp.float32, dtype
        np.testing.assert_array_equal(np.asarray(dataset.X), np.asarray(reference.X))
        assert float(hblogit.make_logdensity(dataset)(params)) == expected, dtype


# --- Group labels ---------------------------------------------------------------------------
# String labels through load_table (every format) and the CLI are tested in test_io and
# test_fit_cli; here sparse large integers, through a CSV file into fit() and the CLI's files.

SPARSE_LABELS = [10**12, 5, 10**15]


def write_labelled_csv(path, x2_scale=1.0):
    """60 rows: outcome 'bought', group 'shop' (SPARSE_LABELS), covariates x1 and x2."""
    rng = np.random.default_rng(9)
    table = pd.DataFrame(
        {
            "bought": rng.integers(0, 2, NUM_OBS),
            "shop": rng.choice(SPARSE_LABELS, NUM_OBS),
            "x1": rng.normal(size=NUM_OBS),
            "x2": x2_scale * rng.normal(size=NUM_OBS),
        }
    )
    table.to_csv(path, index=False)
    return table


def test_sparse_integer_labels_from_a_csv_file_name_the_fitted_groups(tmp_path):
    """load_table factorises 10**12, 5, 10**15 in sorted order into groups 0, 1, 2, each row
    keeps its label, and fit names the kept and the pooled groups by the labels."""
    table = write_labelled_csv(tmp_path / "sales.csv")
    dataset = hblogit.load_table(tmp_path / "sales.csv", "bought", "shop")
    labels = sorted(SPARSE_LABELS)
    assert list(dataset.group_labels) == labels
    order = np.asarray(dataset.order)
    assert [dataset.group_labels[k] for k in np.asarray(dataset.group_idx)] == table["shop"].to_numpy()[order].tolist()
    idata = hblogit.fit(dataset, **SHORT)
    assert idata["posterior"]["kept_group"].values.tolist() == labels
    assert idata["group_moments"]["group"].values.tolist() == labels


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python -m hblogit.fit``'s main on a CSV with sparse integer labels and a covariate
    of scale 1e6: its exit status, its stderr and its output folder."""
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "sales.csv"
    write_labelled_csv(path, x2_scale=1e6)
    out = folder / "run"
    argv = ["--data", str(path), "--outcome", "bought", "--group", "shop", "--sampler", "hmc", "--chains", "2"]
    argv += ["--warmup", "150", "--draws", "150", "--no-progress", "--out", str(out)]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue(), out


def test_cli_names_groups_by_their_sparse_integer_labels(cli_run):
    """The written posterior's kept and pooled groups carry the file's labels, sorted."""
    code, _, out = cli_run
    assert code == 0
    tree = xr.open_datatree(out / "posterior.nc")
    labels = sorted(SPARSE_LABELS)
    assert tree["posterior"]["kept_group"].values.tolist() == labels
    assert tree["group_moments"]["group"].values.tolist() == labels


def test_cli_prints_a_covariate_warning_as_one_line(cli_run):
    """The huge column's warning is one readable stderr line, 'warning: ...', with no
    Python warning header or source line, and the run goes on."""
    code, stderr, _ = cli_run
    assert code == 0
    about_x2 = [line for line in stderr.splitlines() if "x2" in line]
    assert len(about_x2) == 1 and about_x2[0].startswith("warning: covariate 'x2' has scale")
    assert "standardise" in about_x2[0] and "CovariateWarning" not in stderr
