#!/usr/bin/env bash
# Download, for a Python 3.12 x86_64 GPU machine with no network, the pure-Python and
# compiled wheels that experiments/gpu_check.sh needs beyond what such a machine has
# (CUDA jax, numpy, scipy, pandas, optax, equinox, numpyro, numba, h5py). No dependencies
# are resolved: the machine's jax must stay its CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d wheels blackjax==1.7.1 arviz==1.3.0 arviz-base==1.3.1 arviz-stats==1.3.3 arviz-plots==1.3.2 \
    xarray-einstats pymc==6.4.0 pytensor==3.3.8 better-optimize cachetools h5netcdf lazy_loader xarray
ls wheels
