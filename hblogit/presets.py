"""Named problems: ``seed`` is the post's, ``small`` converges in minutes on a 2-core CPU.

``small`` has 40 rows per group. The slow mixers of this model are the slope scales
sigma_gamma, and rows per group are what identify them: with the same 20,000 rows over
1,000 groups (20 rows each), NUTS's 4 x 1000 draws had 2 divergences and a bulk ESS of 410 at a
slope scale near zero; over 2,000 groups, 141; over 500 groups, no divergence and the
smallest bulk ESS 1,163 (``experiments/RESULTS.md``).
"""

PRESETS = {
    "seed": dict(num_obs=1_000_000, num_groups=100_000, num_covariates=20, seed=827),
    "small": dict(num_obs=20_000, num_groups=500, num_covariates=4, seed=827),
}
