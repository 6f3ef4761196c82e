"""The runner's compiled programs: their cache, and the sampling program compiled while
warm-up runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hblogit import runner
from tests.test_fit import tiny_fit


def test_the_executable_cache_keeps_the_most_recent_programs(monkeypatch):
    monkeypatch.setattr(runner, "_EXECUTABLES", type(runner._EXECUTABLES)())
    monkeypatch.setattr(runner, "MAX_EXECUTABLES", 2)
    double = jax.jit(lambda x: 2 * x)
    first = runner.compiled(double, jnp.zeros(1))
    runner.compiled(double, jnp.zeros(2))
    assert runner.compiled(double, jnp.zeros(1)) is first  # a hit, and now the most recent
    runner.compiled(double, jnp.zeros(3))  # evicts the shape (2,), used least recently
    assert len(runner._EXECUTABLES) == 2
    assert [key[2][0][0] for key in runner._EXECUTABLES] == [(1,), (3,)]
    assert runner.compiled(double, jnp.zeros(1)) is first
    assert float(runner.compiled(double, jnp.ones(3))(jnp.ones(3))[0]) == 2.0


@pytest.mark.parametrize("precision", ["mixed", "float32"])
def test_the_sampling_program_compiled_during_warmup_draws_what_one_compiled_after_draws(precision, monkeypatch):
    """The sampling program compiles in a thread while warm-up runs, from the shapes the
    tuned state will have; a float32 run (x64 off for its thread only) compiles it in float32."""
    from_shapes = []
    program = runner._sampling_program

    def recording(sampler, logdensity, config, state, moments, key):
        from_shapes.append(isinstance(jax.tree.leaves(state)[0], jax.ShapeDtypeStruct))
        return program(sampler, logdensity, config, state, moments, key)

    monkeypatch.setattr(runner, "_sampling_program", recording)
    during = tiny_fit(precision=precision)
    monkeypatch.setattr(runner, "_sampling_program_in_background", lambda *args: None)
    after = tiny_fit(precision=precision)
    assert from_shapes == [True, False]
    for group in ("posterior", "sample_stats"):
        for name, values in during[group].data_vars.items():
            np.testing.assert_array_equal(values.values, after[group][name].values)


def test_an_error_compiling_the_sampling_program_reaches_the_caller(monkeypatch):
    def failing(*args):
        raise RuntimeError("no sampling program")

    monkeypatch.setattr(runner, "_sampling_program", failing)
    with pytest.raises(RuntimeError, match="no sampling program"):
        tiny_fit()
