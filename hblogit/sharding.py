"""The same log-density spread over several devices: each device owns a range of groups.

Shards. The rows are sorted by group, so a contiguous range of groups is a contiguous range
of rows. ``plan_shards`` cuts the G groups into D contiguous ranges of about N / D rows
each. Every shard is padded to the largest shard's rows (Ns) and groups (Gs), so one
compiled program serves all devices, and the shards are stacked along a leading axis
sharded over the mesh axis ``"groups"``: device d holds rows [d Ns, (d+1) Ns) and group
slots [d Gs, (d+1) Gs).

Parameters. The sharded Params live in that padded group space: ``z_alpha`` (D Gs,) and
``z_gamma`` (D Gs, K) are sharded along the group axis, the global parameters (alpha,
beta, the two log scales) are replicated. Real group g of shard d sits at slot
d Gs + (g - first group of d); ``ShardedLogDensity.to_sharded`` and ``from_sharded`` map a
user's Params into that space and back, and ``group_slots`` gives the slot of each group.
The group axis is padded rather than sharded as it is because ``shard_map`` needs equal
blocks, and cuts balanced by rows do not fall at multiples of G / D.

Padding, and why it changes nothing:

- A padding row has X = 0 and y = 1/2, so its outcome sign 1 - 2y is 0: its residual is
  zero and the model multiplies its value and information weight by sign^2 = 0 (exactly 1
  on real rows). It adds nothing to the value or the gradient. It points at its shard's
  last slot, which keeps every shard's rows sorted.
- A padding group slot owns no rows, so the likelihood never uses its parameters: it is an
  empty group, left with its N(0, 1) prior. The prior is kept, not masked, so that the
  density the samplers see is proper in every coordinate (a flat direction would drift,
  and its growing variance would enter the adapted mass matrix and the U-turn criterion).
  Its normalising constant is dropped, so at zero padding, as ``to_sharded`` writes it,
  the value equals the single-device value and the gradient is the single-device
  gradient, with zeros at the padding. Samplers then move the padding coordinates as
  independent standard normals, which leaves the real coordinates' posterior unchanged.

Computation. The likelihood runs ``model``'s segment-sum value and gradient on each
device's block inside ``jax.shard_map`` and ``psum``s the value and the global gradient
entries (2K + 2 floats and a scalar per device); the group entries stay on their device.
``model.with_hand_gradient`` wraps it, so ``jax.grad`` returns that hand-written gradient.
The prior is elementwise; under ``jit`` XLA sums the squares of the sharded z's with one
scalar all-reduce.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import checks
from .data import Dataset
from .model import (
    HALF_LOG_2PI,
    Params,
    _segment_value_and_grad,
    init_params,
    likelihood_information,
    log_prior,
    prior_information,
    with_hand_gradient,
)

AXIS = "groups"
PARAM_SPECS = Params(P(), P(), P(), P(), P(AXIS), P(AXIS))


class ShardPlan(NamedTuple):
    """Where each shard's groups and rows start (D + 1 entries each), and the padded sizes."""

    group_start: tuple[int, ...]
    row_start: tuple[int, ...]
    groups_per_shard: int
    rows_per_shard: int

    @property
    def num_shards(self) -> int:
        return len(self.group_start) - 1


def plan_shards(group_sizes, num_shards: int) -> ShardPlan:
    """Contiguous group ranges with about equal rows: each cut is the group boundary nearest
    to a multiple of N / D. A shard may get no group when there are fewer groups than
    devices (or one group holds most rows); it is then all padding."""
    sizes = np.asarray(group_sizes, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    targets = np.arange(1, num_shards) * offsets[-1] / num_shards
    after = np.searchsorted(offsets, targets, side="left")
    before = np.maximum(after - 1, 0)
    nearer = np.where(targets - offsets[before] <= offsets[after] - targets, before, after)
    cuts = np.maximum.accumulate(nearer)  # keep the ranges ordered when boundaries tie
    group_start = np.concatenate([[0], cuts, [len(sizes)]])
    row_start = offsets[group_start]
    return ShardPlan(
        group_start=tuple(int(g) for g in group_start),
        row_start=tuple(int(r) for r in row_start),
        groups_per_shard=max(int(np.diff(group_start).max()), 1),
        rows_per_shard=max(int(np.diff(row_start).max()), 1),
    )


def group_slots(plan: ShardPlan) -> np.ndarray:
    """(G,) the padded slot of every real group."""
    start = np.asarray(plan.group_start)
    groups = np.arange(start[-1])
    shard = np.searchsorted(start, groups, side="right") - 1
    return (groups - start[shard] + shard * plan.groups_per_shard).astype(np.int32)


def make_mesh(devices: int) -> Mesh:
    """A one-axis mesh over the first ``devices`` devices (of every process: multi-host too)."""
    available = jax.devices()
    if checks.integer(devices, "devices") > len(available):
        raise ValueError(f"devices must be an integer in [1, {len(available)}] (the devices JAX sees), got {devices!r}")
    return Mesh(np.asarray(available[:devices]), (AXIS,))


class Shards(eqx.Module):
    """Every shard's rows, padded to ``rows_per_shard`` and stacked on the sharded axis.

    Inside ``shard_map`` each device's block is a Shards of one shard, which reads as a
    Dataset of ``num_groups`` (the slots per shard) groups: what the model's segment sums take.
    """

    X: jax.Array  # (D Ns, K)
    y: jax.Array  # (D Ns,), 1/2 on padding rows
    group_idx: jax.Array  # (D Ns,), the slot within the shard
    num_groups: int = eqx.field(static=True)
    mesh: Mesh = eqx.field(static=True)


def _padded_rows(values: np.ndarray, plan: ShardPlan, fill, shift=None) -> np.ndarray:
    """(D Ns, ...) host array: shard d's rows at [d Ns, d Ns + its rows), ``fill`` after;
    ``shift[d]`` is subtracted from shard d's values (global group -> slot in the shard)."""
    Ns = plan.rows_per_shard
    out = np.full((plan.num_shards * Ns, *values.shape[1:]), fill, values.dtype)
    for d in range(plan.num_shards):
        rows = values[plan.row_start[d] : plan.row_start[d + 1]]
        out[d * Ns : d * Ns + len(rows)] = rows if shift is None else rows - shift[d]
    return out


def _place(host: np.ndarray, mesh: Mesh) -> jax.Array:
    """Shard a host array's leading axis over the mesh; each process supplies its own shards."""
    sharding = NamedSharding(mesh, P(AXIS))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_dataset(dataset: Dataset, plan: ShardPlan, mesh: Mesh) -> Shards:
    X = _padded_rows(np.asarray(dataset.X), plan, 0)
    y = _padded_rows(np.asarray(dataset.y), plan, 0.5)
    slot = _padded_rows(np.asarray(dataset.group_idx), plan, plan.groups_per_shard - 1, shift=plan.group_start)
    return Shards(_place(X, mesh), _place(y, mesh), _place(slot, mesh), plan.groups_per_shard, mesh)


def _sum_globals(tree: Params) -> Params:
    """``psum`` of the entries of the global parameters over the shards; group entries kept."""
    alpha, beta, log_sigma_alpha, log_sigma_gamma = jax.lax.psum(tree[:4], AXIS)
    return tree._replace(alpha=alpha, beta=beta, log_sigma_alpha=log_sigma_alpha, log_sigma_gamma=log_sigma_gamma)


def _over_shards(local, params: Params, shards: Shards, out_specs):
    return jax.shard_map(local, mesh=shards.mesh, in_specs=(PARAM_SPECS, P(AXIS)), out_specs=out_specs)(params, shards)


def _value_and_grad(params: Params, shards: Shards) -> tuple[jax.Array, Params]:
    def local(params, block):
        value, grad = _segment_value_and_grad(params, block)
        return jax.lax.psum(value, AXIS), _sum_globals(grad)

    return _over_shards(local, params, shards, (P(), PARAM_SPECS))


log_likelihood = with_hand_gradient(_value_and_grad)


def information(params: Params, shards: Shards) -> Params:
    """``model.fisher_diagonal`` over the shards."""
    likelihood = _over_shards(
        lambda p, block: _sum_globals(likelihood_information(p, block)), params, shards, PARAM_SPECS
    )
    return jax.tree.map(jnp.add, likelihood, prior_information(params))


class ShardedLogDensity(eqx.Module):
    """``logdensity(params)`` over sharded Params; the same interface as ``model.LogDensity``.

    The runner and the samplers use it unchanged; ``to_sharded`` / ``from_sharded`` convert
    one Params (no chain axis: ``jax.vmap`` them over chains).
    """

    shards: Shards
    plan: ShardPlan = eqx.field(static=True)
    num_groups: int = eqx.field(static=True)
    num_covariates: int = eqx.field(static=True)

    def __call__(self, params: Params) -> jax.Array:
        return _logdensity_jit(params, self)

    @property
    def padding_groups(self) -> int:
        return self.plan.num_shards * self.plan.groups_per_shard - self.num_groups

    @property
    def group_slots(self) -> np.ndarray:
        return group_slots(self.plan)

    def log_prior(self, params: Params) -> jax.Array:
        """The prior, less the normalising constants of the padding groups' N(0, 1)."""
        return log_prior(params) + self.padding_groups * (1 + self.num_covariates) * HALF_LOG_2PI

    def log_likelihood(self, params: Params) -> jax.Array:
        return log_likelihood(params, self.shards)

    def fisher_diagonal(self, params: Params) -> Params:
        return information(params, self.shards)

    def init_params(self, key, dtype=None) -> Params:
        """The single-device start for ``key`` (``model.init_params``), sharded."""
        return self.to_sharded(init_params(key, self, dtype=dtype))

    def to_sharded(self, params: Params) -> Params:
        """Params with (G,) groups -> the padded group space, padding zero, placed on the mesh."""
        slots = self.group_slots
        size = self.plan.num_shards * self.plan.groups_per_shard
        z_alpha = jnp.zeros(size, params.z_alpha.dtype).at[slots].set(params.z_alpha)
        z_gamma = jnp.zeros((size, self.num_covariates), params.z_gamma.dtype).at[slots].set(params.z_gamma)
        padded = params._replace(z_alpha=z_alpha, z_gamma=z_gamma)
        shardings = jax.tree.map(lambda spec: NamedSharding(self.shards.mesh, spec), PARAM_SPECS)
        return jax.lax.with_sharding_constraint(padded, shardings)

    def from_sharded(self, params: Params) -> Params:
        """The real groups of sharded Params (any leading axes, e.g. chains)."""
        slots = self.group_slots
        return params._replace(z_alpha=params.z_alpha[..., slots], z_gamma=params.z_gamma[..., slots, :])


def _logdensity(params: Params, logdensity: ShardedLogDensity) -> jax.Array:
    return logdensity.log_prior(params) + logdensity.log_likelihood(params)


_logdensity_jit = jax.jit(_logdensity)


def make_sharded_logdensity(dataset: Dataset, devices: int) -> ShardedLogDensity:
    """The log-density of ``dataset`` with its groups spread over the first ``devices`` devices."""
    mesh = make_mesh(devices)
    plan = plan_shards(np.asarray(dataset.group_sizes), devices)
    return ShardedLogDensity(shard_dataset(dataset, plan, mesh), plan, dataset.num_groups, dataset.num_covariates)


def default_devices() -> int:
    """Every device JAX sees when they are GPUs and several, else 1 (one CPU is one device)."""
    return jax.device_count() if jax.default_backend() == "gpu" and jax.device_count() > 1 else 1
