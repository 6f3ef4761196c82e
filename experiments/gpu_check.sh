#!/usr/bin/env bash
# One prepared run on a GPU machine (Python 3.12, CUDA jax, numpyro, optax, equinox; no
# network): installs the carried wheels without touching jax, then
#   1. the log-density and gradient on the GPU against float64 on the CPU (auto and fused layouts),
#   2. bench_gradient.py at the post's size: hblogit (every layout, fused included) vs PyMC's
#      jaxified gradient, C = 1, 4, 8,
#   3. python -m hblogit.fit --preset seed, 4 chains; run it again on the same machine (same
#      WARMUP, DRAWS, FIT_ARGS) and it goes on from its checkpoint: a 1000 + 1000 seed fit
#      (~10 min on an H200) takes two calls; the second reads the first's compiled programs
#      back from the fit's compile cache (~/.cache/hblogit/jax) instead of compiling them.
# Usage (repository root):  bash experiments/gpu_check.sh [--smoke]
# --smoke runs every step on the CPU at a small size, to check the script before GPU time
# (the small preset, 100 + 100 steps, whatever WARMUP and DRAWS say).
# Environment: STAGES (default 123) picks the steps; FIT_ARGS adds options to the fit (e.g.
# "--layout fused", "--sampler gibbs" with RUN=/tmp/hblogit_seed_gibbs for a checkpoint of
# its own); WARMUP and DRAWS (default 1000 each); FIT_TIMEOUT (seconds, default 420); RUN,
# the fit's folder and checkpoint (default /tmp/hblogit_seed_fit, /tmp/hblogit_smoke_fit
# with --smoke); PYTHON (default python3); OUT (below).
# Wheels: experiments/fetch_wheels.sh puts them in wheels/ (carry it). Tables go to stdout;
# the fit's progress, summary, run record and plots to $OUT (default experiments/gpu_out).
set -euo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-experiments/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if [ "${1:-}" = "--smoke" ]; then
    PLATFORM=cpu SMOKE=--smoke FIT=(--preset small --warmup 100 --draws 100) RUN=${RUN:-/tmp/hblogit_smoke_fit}
else
    PLATFORM=gpu SMOKE= FIT=(--preset seed --warmup ${WARMUP:-1000} --draws ${DRAWS:-1000}) RUN=${RUN:-/tmp/hblogit_seed_fit}
fi

if ! "$PY" -c "import blackjax, arviz, pymc" 2>/dev/null; then
    echo "== installing carried wheels (no dependencies, so jax stays as it is)"
    "$PY" -m pip install --quiet --no-deps --no-index wheels/*.whl
fi
"$PY" -c "import jax, blackjax, pymc, arviz; print('jax', jax.__version__, jax.devices(), '| blackjax', blackjax.__version__, '| pymc', pymc.__version__, '| arviz', arviz.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

STAGES=${STAGES:-123}
read -r -a FIT_ARGS <<<"${FIT_ARGS:-}"

if [[ $STAGES == *1* ]]; then
    echo "== 1. agreement with float64"
    JAX_PLATFORMS=$([ "$PLATFORM" = gpu ] && echo cuda,cpu || echo cpu) "$PY" experiments/gpu_agreement.py $SMOKE
fi

if [[ $STAGES == *2* ]]; then
    echo "== 2. gradient benchmark"
    "$PY" experiments/bench_gradient.py --platform "$PLATFORM" $SMOKE
    for C in 4 8; do
        "$PY" experiments/bench_gradient.py --platform "$PLATFORM" --chains "$C" --skip-pymc $SMOKE
    done
fi

[[ $STAGES == *3* ]] || exit 0
echo "== 3. the seed fit"
# The progress bar goes to fit_progress.txt, so a fit stopped by FIT_TIMEOUT still shows how
# far it got; the run's own folder stays outside $OUT (posterior.nc can be large), and its
# small files are copied in. The fit checkpoints in $RUN/checkpoint (every minute): running
# this stage again on the same machine goes on from there, so a fit longer than one command's
# time limit runs in several calls. RUN=<a new folder> starts afresh.
CHECKPOINT=(--checkpoint-dir "$RUN/checkpoint")
if [ -f "$RUN/checkpoint/manifest.json" ]; then
    echo "going on from the checkpoint in $RUN/checkpoint"
    CHECKPOINT=(--resume "$RUN/checkpoint")
fi
timeout "${FIT_TIMEOUT:-420}" "$PY" -m hblogit.fit "${FIT[@]}" "${FIT_ARGS[@]}" --chains 4 --platform "$PLATFORM" --out "$RUN" \
    "${CHECKPOINT[@]}" 2>"$OUT/fit_progress.txt" || echo "fit exited with status $?"
tail -c 600 "$OUT/fit_progress.txt"; echo
cp "$RUN"/summary.csv "$RUN"/run.json "$RUN"/recovery.png "$RUN"/trace.png "$OUT"/ 2>/dev/null || true
