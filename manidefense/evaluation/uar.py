"""UAR scoring of unforeseen attacks against an ATA table (Kang et al., 2019).

For an attack A calibrated at six budgets eps_1 < ... < eps_6, ATA(A, eps_k) is the best
accuracy under A at eps_k of any model adversarially trained against A, and a model M scores

    UAR(A, M) = sum_k Acc(A, eps_k, M) / sum_k ATA(A, eps_k),

so 1 means "as robust to A as training against A itself". `evaluate_uar` runs the attacks at
their six calibrated eps (Kang et al.'s protocol: targeted at a random wrong class, accuracy
against the true label); `uar` scores. The calibrated eps and ATA per image shape ship in
`data/uar_calibration.json`.

Reference:
    Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
    Adversaries", arXiv:1908.08016 (2019); code `ddkang/advex-uar`, `analysis/`.
"""

import copy
import importlib.resources
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from manidefense.attacks.base import Attack

#: Calibrated budgets per attack (Kang et al. use six).
NUM_EPS = 6
_ABOUT = (
    "UAR calibration table of manidefense.evaluation.uar. Per image shape (key 'HxWxC') and "
    "attack: the six calibrated eps, ascending, in the units stated by the entry; the ATA "
    "(best accuracy of a model adversarially trained against that attack) at each eps, as "
    "fractions in [0, 1], not percents; and where the numbers come from. An entry whose 'ata' "
    "is null is provisional: its eps are chosen but no ATA has been measured yet, so no UAR "
    "can be computed for it. Regenerate with manidefense.evaluation.uar.save_calibration."
)
_ENTRY_KEYS = ("eps", "ata", "units", "provenance")


# === Scoring ===

def uar(accuracies: Sequence[float], ata: Sequence[float]) -> float:
    """Unforeseen Attack Robustness: `sum(accuracies) / sum(ata)` over the six calibrated eps.

    Args:
        accuracies: the model's accuracy under the attack at each of the six calibrated eps,
            as fractions in [0, 1].
        ata: the attack's ATA at the same six eps, fractions in [0, 1].

    Returns:
        The UAR as a float ratio (the paper prints it as a percentage); it may exceed 1 when
        the model beats the adversarially trained reference.

    Raises:
        ValueError: if either argument does not hold exactly six finite fractions in [0, 1],
            or the ATA sums to 0.

    Example:
    >>> uar([0.8, 0.7, 0.6, 0.5, 0.3, 0.1], [0.9, 0.85, 0.8, 0.7, 0.5, 0.2])
    0.7594...
    """
    accuracies = _fractions("accuracies", accuracies, NUM_EPS, "one per calibrated eps")
    ata = _fractions("ata", ata, NUM_EPS, "one per calibrated eps")
    total = float(ata.sum())
    if total == 0:
        raise ValueError(f"Argument `ata` must have a positive sum (UAR divides by it). "
                         f"Received: ata={ata.tolist()}")
    return float(accuracies.sum()) / total


def calibrate_eps(candidate_eps: Sequence[float], candidate_ata: Sequence[float],
                  reference_ata: Sequence[float]) -> tuple[list[float], list[float]]:
    """Chooses six of the candidate eps whose ATA best matches a reference ATA curve.

    AU's calibration: each reference value `reference_ata[k]` (the L∞ ATA at its k-th eps) is
    matched to a different candidate so that `sum_k |candidate_ata[i_k] - reference_ata[k]|`
    is minimal (a minimum-cost one-to-one assignment, solved exactly by dynamic programming
    over subsets of the six reference slots, O(n * 2^6 * 6) for n candidates).

    Args:
        candidate_eps: n >= 6 positive budgets of the attack being calibrated.
        candidate_ata: the ATA measured at each candidate eps, fractions in [0, 1].
        reference_ata: the six reference ATA values, fractions in [0, 1].

    Returns:
        `(eps, ata)`: two lists of six floats, the chosen candidates sorted by eps ascending,
        with their own (candidate) ATA.

    Raises:
        ValueError: for fewer than six candidates, mismatched lengths, eps <= 0, or ATA
            values that are not fractions.

    Example:
    >>> calibrate_eps([0.5, 1, 2, 4, 8, 16, 32], [.9, .85, .8, .6, .5, .3, .1],
    ...               [.91, .88, .82, .71, .47, .23])
    ([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], [0.9, 0.85, 0.8, 0.6, 0.5, 0.3])

    Reference:
        `ddkang/advex-uar`, `analysis/calibrate_eps.py` (there with SciPy's Hungarian solver).
    """
    eps = _positives("candidate_eps", candidate_eps)
    if eps.size < NUM_EPS:
        raise ValueError(f"Argument `candidate_eps` must hold at least {NUM_EPS} candidates. "
                         f"Received: {eps.size} values")
    ata = _fractions("candidate_ata", candidate_ata, eps.size, "one per candidate eps")
    reference = _fractions("reference_ata", reference_ata, NUM_EPS, "one per reference eps")
    chosen = _assign(np.abs(ata[:, None] - reference[None, :]))
    chosen.sort(key=lambda i: (eps[i], i))
    return [float(eps[i]) for i in chosen], [float(ata[i]) for i in chosen]


def _assign(cost):
    """Rows matched one-to-one to all m columns of `cost` (n >= m) at minimum total cost.

    `best[mask]` is the least cost of filling the columns in `mask` with the rows seen so far;
    `came[i][mask]` records how row i changed it, for the backtrack.
    """
    num_rows, num_cols = cost.shape
    full = (1 << num_cols) - 1
    best = [0.0] + [math.inf] * full
    came = []
    for i in range(num_rows):
        new, step = best[:], [None] * (full + 1)  # None: row i left unused
        for mask, value in enumerate(best):
            if value == math.inf:
                continue
            for j in range(num_cols):
                if not mask & (1 << j) and value + cost[i, j] < new[mask | (1 << j)]:
                    new[mask | (1 << j)] = value + cost[i, j]
                    step[mask | (1 << j)] = mask
        best = new
        came.append(step)
    rows, mask = [], full
    for i in reversed(range(num_rows)):
        if came[i][mask] is not None:
            rows.append(i)
            mask = came[i][mask]
    return rows


# === Calibration table ===

def load_calibration(image_shape: Sequence[int],
                     path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The calibrated eps and ATA of every attack for one image shape.

    Args:
        image_shape: `(height, width, channels)`, e.g. `(28, 28, 1)` or `(32, 32, 3)`.
        path: a calibration JSON file; None reads the one shipped with manidefense.

    Returns:
        A dict `{attack name: {"eps": [6 floats], "ata": [6 floats] or None, "units": str,
        "provenance": str}}` (a copy; `ata` is None for provisional entries).

    Raises:
        ValueError: if the file breaks the schema or has no entry for `image_shape` (the
            message lists the known shapes).

    Example:
    >>> table = load_calibration((32, 32, 3))
    >>> table["pgd-linf"]["eps"][-1] * 255
    32.0
    """
    key = _shape_key(image_shape)
    source = path if path is not None else "the shipped uar_calibration.json"
    table = _validated(json.loads(_read_text(path, source)), source)
    known = sorted(k for k in table if k != "_about")
    if key not in table:
        raise ValueError(f"No UAR calibration for image_shape={tuple(image_shape)!r} (key "
                         f"{key!r}) in {source}. Known image shapes: {known}")
    return copy.deepcopy(table[key])


def save_calibration(table: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes a full calibration table (the schema `load_calibration` reads) as JSON.

    Args:
        table: `{"_about": str (optional; the standard text when missing), "HxWxC":
            {attack name: {"eps", "ata", "units", "provenance"}}, ...}`.
        path: the file to write.

    Raises:
        ValueError: if `table` breaks the schema (nothing is written then).

    Example:
    >>> table = {"28x28x1": {"fog": {"eps": [0.25, 0.5, 1, 2, 4, 8], "ata": None,
    ...                              "units": "fog strength", "provenance": "my run"}}}
    >>> save_calibration(table, "my_calibration.json")  # doctest: +SKIP
    >>> load_calibration((28, 28, 1), path="my_calibration.json")["fog"]["eps"]  # doctest: +SKIP
    [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    """
    table = _validated(copy.deepcopy(dict(table)), "argument `table`")
    table = {"_about": table.pop("_about", _ABOUT), **table}
    text = json.dumps(table, indent=2, ensure_ascii=False)
    # One line per eps or ATA list (they hold only numbers and nulls) keeps the file readable.
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    Path(path).write_text(text + "\n", encoding="utf-8")


def _read_text(path, source):
    try:
        if path is None:
            resource = importlib.resources.files("manidefense.evaluation") / "data"
            return (resource / "uar_calibration.json").read_text(encoding="utf-8")
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"Cannot read the UAR calibration file {source}: {err}") from None


def _shape_key(image_shape):
    try:
        dims = tuple(image_shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                 and d > 0 for d in dims):
        raise ValueError("Argument `image_shape` must be (height, width, channels), three "
                         f"positive integers. Received: image_shape={image_shape!r}")
    return "x".join(str(int(d)) for d in dims)


def _validated(table, source):
    """Checks the schema; returns the table with all-null ATA lists turned into None."""
    if not isinstance(table, dict):
        raise ValueError(f"Invalid UAR calibration in {source}: expected a JSON object. "
                         f"Received: {type(table).__name__}")
    for key, entries in table.items():
        if key == "_about":
            if not isinstance(entries, str):
                raise ValueError(f"Invalid UAR calibration in {source}: `_about` must be a "
                                 f"string. Received: {entries!r}")
            continue
        parts = key.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"Invalid UAR calibration in {source}: keys must be image shapes "
                             f"'HxWxC' (or '_about'). Received: {key!r}")
        if not isinstance(entries, dict):
            raise ValueError(f"Invalid UAR calibration in {source}: {key!r} must map attack "
                             f"names to entries. Received: {entries!r}")
        for name, entry in entries.items():
            entries[name] = _validated_entry(entry, f"{source}, {key}/{name}")
    return table


def _validated_entry(entry, where):
    if not isinstance(entry, dict) or set(entry) != set(_ENTRY_KEYS):
        received = sorted(entry) if isinstance(entry, dict) else entry
        raise ValueError(f"Invalid UAR calibration entry ({where}): expected the keys "
                         f"{list(_ENTRY_KEYS)}. Received: {received!r}")
    eps, ata = entry["eps"], entry["ata"]
    if (not _numbers(eps) or len(eps) != NUM_EPS or min(eps) <= 0
            or any(b <= a for a, b in zip(eps, eps[1:], strict=False))):
        raise ValueError(f"Invalid UAR calibration entry ({where}): `eps` must be {NUM_EPS} "
                         f"positive, strictly ascending numbers. Received: eps={eps!r}")
    if isinstance(ata, list) and len(ata) == NUM_EPS and all(a is None for a in ata):
        ata = None
    if ata is not None and (not _numbers(ata) or len(ata) != NUM_EPS
                            or not all(0 <= a <= 1 for a in ata)):
        raise ValueError(f"Invalid UAR calibration entry ({where}): `ata` must be null or "
                         f"{NUM_EPS} fractions in [0, 1] (not percents). Received: ata={ata!r}")
    for field in ("units", "provenance"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise ValueError(f"Invalid UAR calibration entry ({where}): `{field}` must be a "
                             f"non-empty string. Received: {entry[field]!r}")
    return {"eps": [float(e) for e in eps], "ata": None if ata is None else
            [float(a) for a in ata], "units": entry["units"], "provenance": entry["provenance"]}


def _numbers(values):
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)


# === Running the protocol ===

def uar_attack(name: str, eps: float, *, num_steps: int = 50,
               bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
               seed: int | None = None) -> "Attack":
    """The attack of the UAR table called `name` at `eps`.

    `"pgd-linf"`, `"pgd-l2"`: PGD with random start; `"pgd-l1"`: Frank–Wolfe L1 (Kang et
    al.'s L1 attack, with which the shipped ATA was measured; sparse L1 PGD, the default of
    `PGD(norm="l1")`, was 1.5 points stronger on Fashion-MNIST, see models/RESULTS.md); the
    others are the unforeseen presets (`evaluation.presets.UNFORESEEN`).

    Args:
        name: one of `UAR_ATTACKS`.
        eps: the budget, in the attack's own units.
        num_steps: attack steps.
        bounds: the valid input range.
        batch_size: examples per compiled call.
        seed: int or None.

    Returns:
        The configured attack.

    Example:
    >>> uar_attack("pgd-l1", eps=10.0, num_steps=20)
    PGD(eps=10.0, norm='l1', step_size=None, num_steps=20, ..., method='frank_wolfe', ...)
    """
    from manidefense.attacks import PGD
    from manidefense.evaluation.presets import UNFORESEEN

    common = dict(bounds=bounds, batch_size=batch_size, seed=seed)
    if name in ("pgd-linf", "pgd-l2"):
        return PGD(eps=eps, norm=name[4:], num_steps=num_steps, **common)
    if name == "pgd-l1":
        return PGD(eps=eps, norm="l1", num_steps=num_steps, method="frank_wolfe", **common)
    if name not in UNFORESEEN or name in ("spatial", "stadv"):
        raise ValueError(f"Argument `attacks` must name UAR attacks from {sorted(UAR_ATTACKS)}. "
                         f"Received: {name!r}")
    return UNFORESEEN[name](eps, {**common, "num_steps": num_steps})


#: The attacks `uar_attack` builds (the Lp baselines and the unforeseen attacks).
UAR_ATTACKS = ("pgd-linf", "pgd-l2", "pgd-l1", "fog", "snow", "gabor", "elastic", "jpeg-linf",
               "jpeg-l2", "jpeg-l1")


def random_targets(y: ArrayLike, num_classes: int, seed: int | None = None) -> np.ndarray:
    """A uniformly random wrong class per label (the UAR protocol's targets).

    Args:
        y: integer labels.
        num_classes: number of classes.
        seed: int or None.

    Returns:
        int64 targets, never equal to `y`.

    Example:
    >>> targets = random_targets([0, 1, 2, 3], num_classes=10, seed=0)
    >>> bool(np.all(targets != [0, 1, 2, 3]))
    True
    """
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return (y + rng.integers(1, num_classes, size=y.shape)) % num_classes


def evaluate_uar(model: keras.Model, x: ArrayLike, y: ArrayLike,
                 attacks: Sequence[str] | None = None, *,
                 calibration: Mapping[str, Mapping[str, Any]] | None = None, num_steps: int = 50,
                 targeted: bool = True, bounds: tuple[float, float] = (0.0, 1.0),
                 batch_size: int = 256, seed: int = 0,
                 verbose: bool = False) -> dict[str, dict[str, Any]]:
    """Accuracy at each attack's six calibrated eps, and its UAR where an ATA exists.

    Args:
        model: a Keras classifier (logits or probabilities).
        x: test inputs within `bounds`.
        y: integer labels.
        attacks: names from `UAR_ATTACKS`; None: every attack the calibration table has.
        calibration: `{name: {"eps", "ata", ...}}` as `load_calibration` returns; None loads
            the shipped table for `x`'s image shape.
        num_steps: steps per attack (Kang et al.: 200; the shipped calibrations state theirs).
        targeted: Kang et al.'s protocol (a random wrong class per example, drawn once from
            `seed`); False runs untargeted attacks (stronger, not the protocol of the ATA).
        bounds: the valid input range.
        batch_size: examples per compiled call.
        seed: seed of the targets and the attacks.
        verbose: show the attacks' progress bars.

    Returns:
        `{name: {"eps": [6], "accuracy": [6], "ata": [6] or None, "uar": float or None}}`,
        ready for `uar_table`.

    Example:
    >>> results = evaluate_uar(model, x_test[:500], y_test[:500], ["fog", "elastic"])
    >>> print(uar_table(results))
    """
    from keras import ops

    from manidefense.evaluation.robustness import predict_majority
    from manidefense.validation import check_images, check_labels

    x = check_images(x, bounds)
    y = check_labels(y, len(x), "y")
    table = calibration if calibration is not None else load_calibration(x.shape[1:])
    names = list(table) if attacks is None else list(attacks)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"Argument `attacks` names attacks without a calibration for image "
                         f"shape {x.shape[1:]}: {unknown}. Calibrated: {sorted(table)}")
    num_classes = int(model(ops.convert_to_tensor(x[:2], "float32"), training=False).shape[-1])
    target = random_targets(y, num_classes, seed) if targeted else None
    results = {}
    for i, name in enumerate(names):
        accuracies = []
        for k, eps in enumerate(table[name]["eps"]):
            attack = uar_attack(name, eps, num_steps=num_steps, bounds=bounds,
                                batch_size=batch_size, seed=seed + 100 * i + k)
            attack.verbose = verbose
            x_adv = np.asarray(attack(model, x, y, target))
            accuracies.append(float(np.mean(predict_majority(model, x_adv, 1, batch_size) == y)))
        ata = table[name].get("ata")
        results[name] = {"eps": list(table[name]["eps"]), "accuracy": accuracies, "ata": ata,
                         "uar": None if ata is None else uar(accuracies, ata)}
    return results


# === Tables ===

def uar_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of accuracy at each calibrated eps and the UAR, one row per attack.

    Args:
        results: `{attack name: {"eps": [6 eps], "accuracy": [6 fractions], "ata": [6
            fractions] or None}}`; a missing `"ata"` counts as None.

    Returns:
        Markdown text: the attack, its six accuracies in % (each with its eps), and the UAR
        in % (or "n/a (no ATA)" for provisional calibrations).

    Raises:
        ValueError: if `results` is empty or an entry does not hold six eps and fractions.

    Example:
    >>> text = uar_table({"elastic": {"eps": [.125, .25, .5, 1, 2, 8],
    ...                               "accuracy": [.8, .7, .6, .5, .4, .2], "ata": None}})
    >>> print(text.splitlines()[0])
    | attack | eps_1 | eps_2 | eps_3 | eps_4 | eps_5 | eps_6 | UAR |
    >>> text.splitlines()[2].startswith("| elastic | 80.0% @ 0.125 |")
    True
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("Argument `results` must be a non-empty dict {attack name: {'eps', "
                         f"'accuracy', 'ata'}}}}. Received: results={results!r}")
    header = "| attack | " + " | ".join(f"eps_{k + 1}" for k in range(NUM_EPS)) + " | UAR |"
    lines = [header, "|---" * (NUM_EPS + 2) + "|"]
    for name, entry in results.items():
        if not isinstance(entry, dict) or "eps" not in entry or "accuracy" not in entry:
            raise ValueError(f"Argument `results[{name!r}]` must be a dict with 'eps' and "
                             f"'accuracy' (and optionally 'ata'). Received: {entry!r}")
        eps = _positives(f"results[{name!r}]['eps']", entry["eps"])
        if eps.size != NUM_EPS:
            raise ValueError(f"Argument `results[{name!r}]['eps']` must hold {NUM_EPS} eps. "
                             f"Received: {eps.size} values")
        accuracy = _fractions(f"results[{name!r}]['accuracy']", entry["accuracy"], NUM_EPS,
                              "one per calibrated eps")
        ata = entry.get("ata")
        score = "n/a (no ATA)" if ata is None else f"{uar(accuracy, ata):.1%}"
        cells = [f"{a:.1%} @ {e:.4g}" for a, e in zip(accuracy, eps, strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {score} |")
    return "\n".join(lines) + "\n"


# === Argument checks ===

def _array(name, values):
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Argument `{name}` must be a sequence of numbers. "
                         f"Received: {name}={values!r}") from None
    if array.ndim != 1:
        raise ValueError(f"Argument `{name}` must be a flat sequence of numbers. "
                         f"Received: {name} with shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Argument `{name}` must be finite (no NaN or Inf). "
                         f"Received: {name}={array.tolist()}")
    return array


def _fractions(name, values, length, what):
    array = _array(name, values)
    if array.size != length:
        raise ValueError(f"Argument `{name}` must hold exactly {length} values ({what}). "
                         f"Received: {array.size} values")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"Argument `{name}` must hold fractions in [0, 1] (not percents). "
                         f"Received: values in [{array.min():g}, {array.max():g}]")
    return array


def _positives(name, values):
    array = _array(name, values)
    if array.size and array.min() <= 0:
        raise ValueError(f"Argument `{name}` must hold eps > 0. Received: {name}="
                         f"{array.tolist()}")
    return array
