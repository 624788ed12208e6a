"""Small statistics helpers shared by the recipes in models/ (not part of the library)."""

import numpy as np

from manidefense.stats import binomial_test


def sign_test(a, b):
    """Two-sided exact sign test (McNemar) on paired booleans.

    Returns `(p, only_a, only_b)`: the p-value and the discordant counts (examples only `a`
    gets right, examples only `b` gets right), via the library's exact binomial test.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    p = binomial_test(only_a, only_a + only_b) if only_a + only_b else 1.0
    return p, only_a, only_b

