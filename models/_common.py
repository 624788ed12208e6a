"""Small statistics helpers shared by the recipes in models/ (not part of the library)."""

import json
import time

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



def log(*args):
    """A timestamped progress line (recipes print; the library never does)."""
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def cached(path, compute):
    """`compute()`'s JSON-able result, stored at `path` so a rerun resumes."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value, indent=1))
    return value
