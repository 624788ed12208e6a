"""Corruptions: the unforeseen attacks' transforms at fixed, random (not optimised) strength."""

import functools

import numpy as np
from numpy.typing import ArrayLike

from manidefense.attacks.unforeseen.base import UnforeseenAttack
from manidefense.attacks.unforeseen.fog import Fog
from manidefense.attacks.unforeseen.gabor import Gabor
from manidefense.attacks.unforeseen.jpeg import JPEG
from manidefense.attacks.unforeseen.snow import Snow
from manidefense.attacks.unforeseen.spatial import Spatial
from manidefense.attacks.unforeseen.warp import Elastic
from manidefense.validation import check_choice, check_positive_int

# Strength per severity 1..5, for images in [0, 1] of 28-32 pixels, roughly matched by eye to
# the look of the attacks' calibrated range (see models/RESULTS.md, unforeseen section).
SEVERITIES = {
    "fog": {"eps": (0.25, 0.5, 1.0, 2.0, 4.0)},
    "snow": {"eps": (0.25, 0.5, 1.0, 2.0, 4.0)},
    "gabor": {"eps": (0.05, 0.1, 0.2, 0.4, 0.8)},
    "elastic": {"eps": (0.25, 0.5, 1.0, 1.5, 2.0)},
    "jpeg": {"eps": (0.125, 0.25, 0.5, 1.0, 2.0)},
    "spatial": {"max_angle": (6.0, 12.0, 18.0, 24.0, 30.0),
                "max_shift": (0.6, 1.2, 1.8, 2.4, 3.0)},
}
KINDS = tuple(SEVERITIES)


def corruption(kind: str, severity: int, seed: int | None = None,
               bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256) -> UnforeseenAttack:
    """The attack object whose random start is the corruption `kind` at `severity` (1..5).

    Args:
        kind: one of `KINDS`.
        severity: 1 (mild) .. 5 (strong).
        seed: int or None.
        bounds: value range of the images.
        batch_size: examples per compiled call.

    Returns:
        The configured unforeseen attack (its `random_transform` is the corruption).

    Example:
    >>> corruption("snow", 2, seed=0)
    Snow(eps=0.5, ...)
    """
    kind = check_choice("kind", kind, KINDS)
    severity = check_positive_int("severity", severity)
    if severity > 5:
        raise ValueError(f"Argument `severity` must be in 1..5. Received: severity={severity}")
    settings = {k: v[severity - 1] for k, v in SEVERITIES[kind].items()}
    cls = {"fog": Fog, "snow": Snow, "gabor": Gabor, "elastic": Elastic, "jpeg": JPEG,
           "spatial": Spatial}[kind]
    return cls(**settings, seed=seed, bounds=bounds, batch_size=batch_size)


def corrupt(x: ArrayLike, kind: str, severity: int = 3, seed: int | None = None,
            bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256) -> np.ndarray:
    """Applies a corruption: an unforeseen attack's transform with random parameters.

    The same generators as the attacks (fog fractal, snow flakes, Gabor texture, elastic
    flow, JPEG coefficient noise, rotation and shift), drawn at random and not optimised
    against any model, to measure out-of-distribution accuracy alongside adversarial accuracy.

    Args:
        x: images `(batch, H, W, C)` within `bounds`.
        kind: one of `KINDS` (`"fog"`, `"snow"`, `"gabor"`, `"elastic"`, `"jpeg"`,
            `"spatial"`).
        severity: 1 (mild) .. 5 (strong); the strengths are in `SEVERITIES`.
        seed: int or None; equal seeds give equal corruptions.
        bounds: value range of `x`.
        batch_size: examples per compiled call.

    Returns:
        Corrupted images, a numpy array like `x`.

    Example:
    >>> x_fog = manidefense.attacks.corrupt(x, "fog", severity=3, seed=0)
    >>> x_fog.shape == x.shape
    True
    """
    bounds = tuple(float(b) for b in bounds)
    return _cached(kind, severity, seed, bounds, batch_size).random_transform(x)


@functools.lru_cache(maxsize=32)
def _cached(kind, severity, seed, bounds, batch_size):
    # One object per setting keeps its compiled graph: a new object would retrace on every
    # call. Results do not change, since `random_transform` restarts the seed on every call.
    return corruption(kind, severity, seed, bounds, batch_size)
