"""Named problems: ``seed`` is the post's, ``small`` converges in minutes on a 2-core CPU."""

PRESETS = {
    "seed": dict(num_obs=1_000_000, num_groups=100_000, num_covariates=20, seed=827),
    "small": dict(num_obs=20_000, num_groups=1_000, num_covariates=4, seed=827),
}
