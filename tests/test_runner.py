"""The runner's cache of compiled programs."""

import jax
import jax.numpy as jnp

from hblogit import runner


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
