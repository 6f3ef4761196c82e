"""hblogit.sharding: the plan here; everything that needs several devices in a subprocess.

JAX reads ``XLA_FLAGS`` once, when its backend starts, and the other tests in this
process start it with one CPU device; ``sharding_cases.py`` therefore runs under its own
pytest with four virtual CPU devices.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hblogit.sharding import group_slots, plan_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "sizes, shards",
    [
        ([5, 0, 7, 1, 0, 9, 3, 3, 2, 0, 8], 4),  # uneven, empty groups, G not divisible by D
        ([100, 1, 1, 1, 1], 4),  # one group holds most rows: shards left all padding
        ([2, 2], 4),  # fewer groups than shards
        ([4] * 16, 4),  # an even split: no padding group
        ([3, 1, 4], 1),
    ],
)
def test_plan_cuts_contiguous_ranges_balanced_by_rows(sizes, shards):
    sizes = np.asarray(sizes)
    plan = plan_shards(sizes, shards)
    start = np.asarray(plan.group_start)
    assert plan.num_shards == shards and start[0] == 0 and start[-1] == len(sizes)
    assert np.all(np.diff(start) >= 0)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    assert plan.row_start == tuple(offsets[start])
    # every cut is the group boundary nearest to its share of the rows
    for d in range(1, shards):
        target = d * sizes.sum() / shards
        assert abs(offsets[start[d]] - target) <= np.min(np.abs(offsets - target)) + 1e-9 or start[d] == start[d - 1]
    assert plan.rows_per_shard == max(np.diff(plan.row_start).max(), 1)
    assert plan.groups_per_shard == max(np.diff(start).max(), 1)
    slots = group_slots(plan)
    assert len(np.unique(slots)) == len(sizes) and slots.max() < shards * plan.groups_per_shard
    shard_of = slots // plan.groups_per_shard
    assert np.all(start[shard_of] <= np.arange(len(sizes))) and np.all(np.arange(len(sizes)) < start[shard_of + 1])


def test_on_four_virtual_devices():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cases = Path(__file__).with_name("sharding_cases.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
