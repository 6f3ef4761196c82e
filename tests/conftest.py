"""Tests run in float64 by default (the oracle comparisons need it); float32 is explicit.

The command line's compile cache is off (for the tests' subprocesses too): the suite compiles
thousands of programs once each, and writing them all cost more time than the few
repeats saved (858 s against 775 s on two cores). tests/test_compile_cache.py turns it on.
"""

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
os.environ["HBLOGIT_COMPILE_CACHE"] = "off"


def random_problem(seed, num_obs, num_groups, num_covariates, *, empty_group=True, dtype=np.float64):
    """Random data with unsorted groups; the last group has no rows when ``empty_group``."""
    rng = np.random.default_rng(seed)
    used = num_groups - 1 if empty_group else num_groups
    group_idx = rng.integers(0, used, size=num_obs)
    X = rng.normal(size=(num_obs, num_covariates)).astype(dtype)
    y = rng.integers(0, 2, size=num_obs)
    return X, y, group_idx


@pytest.fixture
def tiny_preset(monkeypatch):
    """The command line's preset "small" made tiny (300 rows, 12 groups, K = 2), for tests
    of ``python -m hblogit.fit`` that check what it does, not what it estimates."""
    from hblogit import presets

    monkeypatch.setitem(presets.PRESETS, "small", dict(num_obs=300, num_groups=12, num_covariates=2, seed=1))


@pytest.fixture(scope="session")
def oracle_problem():
    """A small problem, K != 20, unsorted groups, one empty group, with its PyMC model."""
    pytest.importorskip("pymc")
    from reference.model import build_model

    X, y, group_idx = random_problem(0, num_obs=400, num_groups=12, num_covariates=3)
    model = build_model(X, y, group_idx, num_groups=12)
    return dict(
        X=X,
        y=y,
        group_idx=group_idx,
        num_groups=12,
        model=model,
        logp=model.compile_logp(),
        dlogp=model.compile_dlogp(),
    )
