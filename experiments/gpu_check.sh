#!/usr/bin/env bash
# One prepared run on a GPU machine (Python 3.12, CUDA jax, numpyro, optax, equinox; no
# network): installs the carried wheels without touching jax, then runs the stages STAGES
# names, in the order it names them (default 123):
#   1. the log-density and gradient on the GPU against float64 on the CPU (the auto layout),
#   2. bench_gradient.py at the post's size: hblogit (segment and blocked) vs PyMC's
#      jaxified gradient, C = 1, 4, 8,
#   3. python -m hblogit.fit --preset seed, 4 chains; run it again on the same machine (same
#      WARMUP, DRAWS, FIT_ARGS) and it goes on from its checkpoint: a 1000 + 1000 seed fit
#      (~10 min on an H200) takes two calls; the second reads the first's compiled programs
#      back from the fit's compile cache (~/.cache/hblogit/jax) instead of compiling them,
#   4. the fused layout (hblogit.fused's Triton kernel): stage 1's check and stage 2's
#      gradient rows for it, within FUSED_TIMEOUT seconds (default 240): on an H100 with
#      jax 0.11.2 an earlier kernel's first compile had not ended after about 90 s, which
#      stalled stages 1 and 2 when they included it,
#   5. bench_gibbs_step.py at the post's size: where a 4-chain gibbs step's time goes, and
#      the step with its chains vmapped against sequential.
# Usage (repository root):  bash experiments/gpu_check.sh [--smoke]
# --smoke runs every step on the CPU at a small size, to check the script before GPU time
# (the small preset, 100 + 100 steps, whatever WARMUP and DRAWS say; stage 4 checks the
# kernel in Pallas' interpreter and times nothing).
# Environment: STAGES (default 123); FIT_ARGS adds options to the fit (e.g.
# "--layout fused", "--sampler gibbs" with RUN=/tmp/hblogit_seed_gibbs for a checkpoint of
# its own); WARMUP and DRAWS (default 1000 each); FIT_TIMEOUT (seconds, default 420); RUN,
# the fit's folder and checkpoint (default /tmp/hblogit_seed_fit, /tmp/hblogit_smoke_fit
# with --smoke); FUSED_TIMEOUT; PYTHON (default python3); OUT (below).
# Wheels: experiments/fetch_wheels.sh puts them in wheels/ (carry it). Tables go to stdout
# and $OUT/gpu_check.log; the fit's progress, summary, run record and plots to $OUT (default
# experiments/gpu_out).
set -euo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-experiments/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1  # the tables come back whole, however long the output
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
DEVICE_PLATFORMS=$([ "$PLATFORM" = gpu ] && echo cuda,cpu || echo cpu)

agreement() {
    echo "== 1. agreement with float64"
    JAX_PLATFORMS=$DEVICE_PLATFORMS "$PY" experiments/gpu_agreement.py --layouts auto $SMOKE
}

gradient_benchmark() {
    echo "== 2. gradient benchmark"
    "$PY" experiments/bench_gradient.py --platform "$PLATFORM" --layouts blocked,segment $SMOKE
    for C in 4 8; do
        "$PY" experiments/bench_gradient.py --platform "$PLATFORM" --layouts blocked,segment --chains "$C" --skip-pymc $SMOKE
    done
}

seed_fit() {
    echo "== 3. the seed fit"
    # The progress bar goes to fit_progress.txt, so a fit stopped by FIT_TIMEOUT still shows how
    # far it got; the run's own folder stays outside $OUT (posterior.nc can be large), and its
    # small files are copied in. The fit checkpoints in $RUN/checkpoint (every minute): running
    # this stage again on the same machine goes on from there, so a fit longer than one command's
    # time limit runs in several calls. RUN=<a new folder> starts afresh.
    local checkpoint=(--checkpoint-dir "$RUN/checkpoint")
    if [ -f "$RUN/checkpoint/manifest.json" ]; then
        echo "going on from the checkpoint in $RUN/checkpoint"
        checkpoint=(--resume "$RUN/checkpoint")
    fi
    timeout "${FIT_TIMEOUT:-420}" "$PY" -m hblogit.fit "${FIT[@]}" "${FIT_ARGS[@]}" --chains 4 --platform "$PLATFORM" --out "$RUN" \
        "${checkpoint[@]}" 2>"$OUT/fit_progress.txt" || echo "fit exited with status $?"
    tail -c 600 "$OUT/fit_progress.txt"; echo
    cp "$RUN"/summary.csv "$RUN"/run.json "$RUN"/recovery.png "$RUN"/trace.png "$OUT"/ 2>/dev/null || true
}

within() {  # within DEADLINE COMMAND...: COMMAND, stopped when $SECONDS reaches DEADLINE
    local left=$(($1 - SECONDS))
    shift
    [ "$left" -gt 0 ] && timeout "$left" "$@" && return 0
    echo "failed, or stopped at the stage's time limit ($left s left when it began): $*"
    return 1
}

fused_layout() {
    echo "== 4. the fused layout (at most ${FUSED_TIMEOUT:-240} s)"
    local deadline=$((SECONDS + ${FUSED_TIMEOUT:-240}))
    within "$deadline" env JAX_PLATFORMS="$DEVICE_PLATFORMS" "$PY" experiments/gpu_agreement.py --layouts fused $SMOKE || return 0
    [ "$PLATFORM" = gpu ] || return 0  # on a CPU the kernel runs in Pallas' interpreter: nothing to time
    for C in 1 4 8; do
        within "$deadline" "$PY" experiments/bench_gradient.py --platform gpu --layouts fused --gradient-only --skip-pymc --chains "$C" || return 0
    done
}

gibbs_step() {
    echo "== 5. a gibbs step, piece by piece"
    "$PY" experiments/bench_gibbs_step.py --platform "$PLATFORM" $SMOKE
}

for stage in $(grep -o . <<<"$STAGES"); do
    case $stage in
        1) agreement ;;
        2) gradient_benchmark ;;
        3) seed_fit ;;
        4) fused_layout ;;
        5) gibbs_step ;;
        *) echo "gpu_check.sh: unknown stage $stage in STAGES=$STAGES (stages are 1 to 5)" >&2; exit 2 ;;
    esac
done
