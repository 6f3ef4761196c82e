"""The runner's compiled programs: their cache, and their compiles in the background."""

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
def test_programs_compiled_in_the_background_draw_what_programs_compiled_in_turn_draw(precision, monkeypatch):
    """The warm-up and sampling programs compile in threads while the starting points are
    found, from the shapes the run's states will have; a float32 run (x64 off for its own
    thread only) compiles them in float32."""
    from_shapes = []

    def recording(program):
        def record(sampler, logdensity, config, state, *args):
            from_shapes.append((program.__name__, isinstance(jax.tree.leaves(state)[0], jax.ShapeDtypeStruct)))
            return program(sampler, logdensity, config, state, *args)

        return record

    for name in ("_warmup_program", "_sampling_program"):
        monkeypatch.setattr(runner, name, recording(getattr(runner, name)))
    background = tiny_fit(precision=precision)
    assert sorted(from_shapes) == [("_sampling_program", True), ("_warmup_program", True)]
    monkeypatch.setattr(runner, "_programs_in_background", lambda *args: {})
    in_turn = tiny_fit(precision=precision)
    assert sorted(from_shapes[2:]) == [("_sampling_program", False), ("_warmup_program", False)]
    for group in ("posterior", "sample_stats", "warmup_sample_stats"):
        for name, values in background[group].data_vars.items():
            np.testing.assert_array_equal(values.values, in_turn[group][name].values)


@pytest.mark.parametrize("program", ["_warmup_program", "_sampling_program"])
def test_an_error_compiling_a_program_reaches_the_caller(program, monkeypatch):
    def failing(*args):
        raise RuntimeError(f"no {program}")

    monkeypatch.setattr(runner, program, failing)
    with pytest.raises(RuntimeError, match=f"no {program}"):
        tiny_fit()
