"""Data: the post's generator, the validated group-sorted Dataset, and file loading.

Everything here runs on the host in NumPy, before any JAX work, so that a bad input is
reported as a ``ValueError`` naming the argument instead of a NaN deep inside a sampler, and
a legal but ill-suited covariate (constant, or on a huge scale) as a ``CovariateWarning``
naming the column.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .checks import integer, repeated


class Truth(NamedTuple):
    """The parameter values a simulated dataset was drawn from (constrained scale)."""

    alpha: np.ndarray
    beta: np.ndarray
    sigma_alpha: np.ndarray
    sigma_gamma: np.ndarray
    alpha_group: np.ndarray
    gamma_group: np.ndarray


class Simulated(NamedTuple):
    """A simulated problem: raw arrays in the generator's row order, plus the truth."""

    X: np.ndarray
    y: np.ndarray
    group_idx: np.ndarray
    truth: Truth

    def dataset(self) -> "Dataset":
        return Dataset(self.X, self.y, self.group_idx, num_groups=self.truth.alpha_group.shape[0])


def simulate(
    num_obs: int = 1_000_000,
    num_groups: int = 100_000,
    num_covariates: int = 20,
    seed: int = 827,
) -> Simulated:
    """The post's data generator, drawing from the same random stream in the same order.

    At the defaults, ``X``, ``y`` and ``group_idx`` are bit-identical to the post's
    (mean(y) = 0.359275). The dtypes of every intermediate follow the post exactly, since
    they change the values that NumPy draws.
    """
    num_obs, num_groups = integer(num_obs, "num_obs"), integer(num_groups, "num_groups")
    num_covariates = integer(num_covariates, "num_covariates", low=0)  # 0: random intercepts only
    rng = np.random.default_rng(seed)
    group_idx = rng.integers(0, num_groups, size=num_obs, dtype=np.int64)
    X = rng.normal(size=(num_obs, num_covariates)).astype(np.float32)
    alpha = np.float32(-1.0)
    beta = rng.normal(0.0, 0.45, size=num_covariates).astype(np.float32)
    sigma_alpha = np.float32(0.80)
    sigma_gamma = rng.uniform(0.15, 0.35, size=num_covariates).astype(np.float32)
    alpha_group = rng.normal(0.0, sigma_alpha, size=num_groups).astype(np.float32)
    gamma_group = rng.normal(0.0, sigma_gamma, size=(num_groups, num_covariates)).astype(np.float32)
    y = draw_outcome(rng, X, group_idx, alpha, beta, alpha_group, gamma_group)
    truth = Truth(alpha, beta, sigma_alpha, sigma_gamma, alpha_group, gamma_group)
    return Simulated(X, y, group_idx, truth)


def draw_outcome(rng, X, group_idx, alpha, beta, alpha_group, gamma_group) -> np.ndarray:
    """y ~ Bernoulli(sigmoid(eta)), computed exactly as the post computes it."""
    eta = alpha + alpha_group[group_idx] + np.sum(X * (beta + gamma_group[group_idx]), axis=1)
    p = 1.0 / (1.0 + np.exp(-eta))
    return rng.binomial(1, p).astype(np.int64)


class Dataset(eqx.Module):
    """Validated data, rows sorted (stably) by group.

    ``X`` keeps float64 when given float64 and is float32 otherwise. A float64 ``X`` switches
    on JAX's x64 mode, as a fit in the default precision does, since JAX would otherwise
    round it to float32 here, before any fit could ask for float64. ``order`` is the
    permutation applied to the caller's rows (``X_sorted = X_caller[order]``);
    ``group_sizes`` and ``group_offsets`` describe the contiguous block of each group.
    A group with no rows is legal: its parameters keep their prior. A constant or huge
    covariate is legal too, and warned of (``covariate_problems``). ``X`` may have no
    columns (K = 0): the model with random intercepts only.

    It is a pytree (an equinox Module) with the sizes static, so it crosses ``jit``.
    """

    X: jnp.ndarray
    y: jnp.ndarray
    group_idx: jnp.ndarray
    order: jnp.ndarray
    group_sizes: jnp.ndarray
    group_offsets: jnp.ndarray
    num_groups: int = eqx.field(static=True)
    covariate_names: tuple[str, ...] = eqx.field(static=True)
    group_labels: tuple | None = eqx.field(static=True)

    def __init__(self, X, y, group_idx, num_groups=None, *, covariate_names=None, group_labels=None):
        X, y, group_idx, num_groups = _validate(X, y, group_idx, num_groups)
        order = np.argsort(group_idx, kind="stable")
        sizes = np.bincount(group_idx, minlength=num_groups)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        num_covariates = X.shape[1]
        if covariate_names is None:
            covariate_names = tuple(f"x{k}" for k in range(num_covariates))
        covariate_names = tuple(str(c) for c in covariate_names)
        if len(covariate_names) != num_covariates:
            raise ValueError(
                f"covariate_names has {len(covariate_names)} names but X has {num_covariates} columns"
            )
        twice = repeated(covariate_names)
        if twice:
            raise ValueError(f"covariate_names repeats {', '.join(map(repr, twice))}: each covariate needs its own name")
        if group_labels is not None:
            group_labels = tuple(np.asarray(group_labels).tolist())
            if len(group_labels) != num_groups:
                raise ValueError(f"group_labels has {len(group_labels)} labels but there are {num_groups} groups")
        for message in covariate_problems(X, covariate_names):
            warnings.warn(message, CovariateWarning, skip_file_prefixes=_CALLER_SKIPS)
        if X.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.X = jnp.asarray(X[order])
        self.y = jnp.asarray(y[order].astype(X.dtype))
        self.group_idx = jnp.asarray(group_idx[order].astype(np.int32))
        self.order = jnp.asarray(order.astype(np.int32))
        self.group_sizes = jnp.asarray(sizes.astype(np.int32))
        self.group_offsets = jnp.asarray(offsets.astype(np.int32))
        self.num_groups = int(num_groups)
        self.covariate_names = covariate_names
        self.group_labels = group_labels

    def astype(self, dtype) -> "Dataset":
        """The same sorted rows with ``X`` (and ``y``) in ``dtype``, labels and order kept."""
        if self.X.dtype == dtype:
            return self
        return eqx.tree_at(lambda d: (d.X, d.y), self, (self.X.astype(dtype), self.y.astype(dtype)))

    @property
    def num_obs(self) -> int:
        return self.X.shape[0]

    @property
    def num_covariates(self) -> int:
        return self.X.shape[1]

    @property
    def num_params(self) -> int:
        return 2 + 2 * self.num_covariates + self.num_groups * (1 + self.num_covariates)


class CovariateWarning(UserWarning):
    """A covariate that the model's priors cannot serve as it stands: constant, or on a huge scale."""


# A covariate's scale beyond which the priors stop being weakly informative (see covariate_problems).
HUGE_SCALE = 1e3

# Point a warning at the caller's line: past hblogit's frames and equinox's, whose metaclass
# runs Dataset.__init__.
_CALLER_SKIPS = tuple(os.path.dirname(path) + os.sep for path in (__file__, eqx.__file__))


def covariate_problems(X: np.ndarray, names) -> list[str]:
    """One message for each covariate column that is constant or on a huge scale, naming it.

    - Constant: every row holds the same value (exactly; a single row is not judged). A
      non-zero constant duplicates the intercept alpha (and its group slopes the group
      intercepts), so only the priors tell their coefficients apart; a zero column adds
      nothing, so its coefficients keep their priors. The message says to drop it.
    - Huge: the column's root mean square exceeds ``HUGE_SCALE`` = 1e3. The priors are per
      unit of x_k (beta_k ~ Normal(0, 1), sigma_gamma_k ~ HalfNormal(0.5)), so a row's term
      x_ik beta_k has prior sd |x_ik|: weakly informative for covariates of order 1, while at
      1e3 the priors allow log-odds shifts in the thousands and the coefficient's posterior
      lies on a scale a thousand times below the prior's, which the sampler's adaptation has
      to find. The root mean square counts an offset as well as a spread: a "year" column of
      2000 +- 10 is nearly collinear with the intercept. Ordinary covariates (z-scores,
      proportions, small counts, ages) are below 1e2, a factor of ten under the threshold. The
      message says to standardise.
    """
    constant = (X.min(axis=0) == X.max(axis=0)) & (X.shape[0] > 1)
    scale = np.sqrt(np.einsum("ij,ij->j", X, X, dtype=np.float64) / X.shape[0])  # no float32 overflow
    messages = []
    for k, name in enumerate(names):
        if constant[k]:
            value = X[0, k].item()
            effect = (
                "adds nothing to the log-odds, so its coefficients keep their priors"
                if value == 0
                else "duplicates the intercept alpha, so only the priors tell their coefficients apart"
            )
            messages.append(
                f"covariate {name!r} is constant ({value:g} on every row): it {effect}; "
                "drop it (with sd 0 it cannot be standardised)"
            )
        elif scale[k] > HUGE_SCALE:
            messages.append(
                f"covariate {name!r} has scale {scale[k]:.3g} (root mean square), over {HUGE_SCALE:g}, "
                "while the priors assume covariates of order 1: standardise it (subtract its mean, "
                "divide by its sd)"
            )
    return messages


def _validate(X, y, group_idx, num_groups):
    """Host-side checks; returns NumPy arrays with X float32 (or float64), y and groups int64."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x covariates), got an array with {X.ndim} dimension(s)")
    if X.shape[0] == 0:
        raise ValueError("X has no rows: a dataset needs at least one observation")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64 if X.dtype == np.float64 else np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"X has {bad.sum()} non-finite value(s) (NaN or inf), first at row {rows[0]}, column {cols[0]}"
        )
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if not (y.dtype == bool or np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"y must be 0/1 (or boolean), got dtype {y.dtype}")
    not_binary = ~np.isin(y, (0, 1))
    if not_binary.any():
        first = int(np.argmax(not_binary))
        raise ValueError(f"y must be all 0 or 1: found {y[first]!r} at row {first} ({not_binary.sum()} such rows)")
    y = y.astype(np.int64)
    group_idx = np.asarray(group_idx)
    if group_idx.ndim != 1:
        raise ValueError(f"group_idx must be 1-D, got shape {group_idx.shape}")
    if not np.issubdtype(group_idx.dtype, np.integer):
        raise ValueError(
            f"group_idx must be integers, got dtype {group_idx.dtype}; factorise labels first "
            "(e.g. with hblogit.load_table or pandas.factorize)"
        )
    if not (len(X) == len(y) == len(group_idx)):
        raise ValueError(
            f"lengths differ: X has {len(X)} rows, y has {len(y)}, group_idx has {len(group_idx)}"
        )
    if group_idx.min() < 0:
        raise ValueError(f"group_idx must be non-negative, found {group_idx.min()}")
    max_group = int(group_idx.max())
    if num_groups is None:
        num_groups = max_group + 1
    num_groups = integer(num_groups, "num_groups")
    if max_group >= num_groups:
        raise ValueError(f"group_idx must be < num_groups = {num_groups}, found {max_group}")
    return X, y, group_idx.astype(np.int64), int(num_groups)
