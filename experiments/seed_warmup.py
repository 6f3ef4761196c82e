"""How the seed fit's warm-up goes: NUTS on the post's problem, progress every few steps.

    python experiments/seed_warmup.py [--smoke] [--warmup 1000] [--draws 1000] [--chunk 10]

The progress bar (stderr) is updated after every chunk of ``--chunk`` steps with the step
size, divergences and cumulative gradient evaluations, so a run stopped by a time limit
still shows the leapfrog steps per NUTS step of each chunk of the warm-up. With ``--smoke``
the small preset and a few steps, to check the script on a CPU.
"""

import argparse
from pathlib import Path

import hblogit
from hblogit.fit import write_outputs
from hblogit.presets import PRESETS

parser = argparse.ArgumentParser()
parser.add_argument("--smoke", action="store_true")
parser.add_argument("--warmup", type=int, default=1000)
parser.add_argument("--draws", type=int, default=1000)
parser.add_argument("--chunk", type=int, default=10)
parser.add_argument("--sampler", default="nuts")
parser.add_argument("--out", default="/tmp/seed_warmup")
args = parser.parse_args()
sim = hblogit.simulate(**PRESETS["small" if args.smoke else "seed"])
idata = hblogit.fit(sim.dataset(), sampler=args.sampler, warmup=args.warmup, draws=args.draws, chunk_size=args.chunk)
write_outputs(idata, sim.truth, Path(args.out))
