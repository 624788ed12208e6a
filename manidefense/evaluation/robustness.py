"""`evaluate_robustness`: a cascade of attacks, the per-example worst case, and the checklist.

The cascade does less work than running every attack on every point: each attack runs only on
the points every earlier attack failed on (AutoAttack's compaction), so a strong first attack
makes the rest cheap. Every returned example is checked (budget, bounds, finite) and
re-classified by the full defended model with fresh randomness, by majority vote over draws
for a randomized model, so neither a silent failure nor a lucky noise draw counts.
"""

import hashlib
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import manidefense
from manidefense import distribute
from manidefense.attacks import FGSM, PGD, UniformNoise
from manidefense.attacks.adaptive import adaptive_model, draws_per_call, is_randomized
from manidefense.attacks.gradients import output_kind
from manidefense.attacks.wrappers import Transfer
from manidefense.evaluation import checks as checklist
from manidefense.evaluation.presets import (
    default_attacks,
    is_unforeseen,
    make_attack,
    make_unforeseen,
)
from manidefense.evaluation.report import RobustnessReport
from manidefense.stats import clopper_pearson
from manidefense.validation import (
    check_bounds,
    check_choice,
    check_images,
    check_labels,
    check_non_negative,
    check_norm,
    check_positive_int,
)

CHECKS = ("none", "fast", "full")
_TOLERANCE = 1e-4  # relative slack on ‖δ‖ ≤ eps when auditing returned examples (float32)




def predict_majority(model: keras.Model, x: np.ndarray, num_draws: int = 1,
                     batch_size: int = 256) -> np.ndarray:
    """Labels by majority vote over `num_draws` calls (one call for deterministic models).

    Every call draws fresh randomness; ties go to the smaller class index.

    Args:
        model: a Keras classifier.
        x: inputs, batch first.
        num_draws: calls per input (votes).
        batch_size: inputs per compiled call.

    Returns:
        An int64 array of labels.

    Example:
    >>> labels = predict_majority(defended, x_test, num_draws=11)
    """
    fn = checklist.predict_function(model, x.shape[1:])
    votes = None
    for _ in range(num_draws):
        predicted = np.concatenate([
            np.argmax(ops.convert_to_numpy(fn(tf.constant(x[i:i + batch_size], tf.float32))),
                      axis=-1) for i in range(0, len(x), batch_size)])
        if votes is None:
            votes = np.zeros((len(x), 1 + int(predicted.max())), dtype=np.int64)
        if predicted.max() >= votes.shape[1]:
            votes = np.pad(votes, ((0, 0), (0, 1 + int(predicted.max()) - votes.shape[1])))
        votes[np.arange(len(x)), predicted] += 1
    return np.argmax(votes, axis=1)


def audit(x, x_adv, eps, norm, bounds, has_budget=True):
    """E17: which returned examples are valid (finite, within bounds, within the budget).

    An independent check in float64 numpy, on purpose: it does not trust the attack's own
    projection (the `Attack` base class projects, but a user callable, a `Transfer` source or
    a buggy subclass may not), so a result outside the threat model can never count as a
    break. The tolerance covers float32 rounding of a correctly projected result only.

    Returns:
        `(valid, within_budget)` boolean arrays; `within_budget` is False for minimum-distance
        attacks' results beyond eps (not an error), `valid` is False for real violations.
    """
    flat = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    finite = np.all(np.isfinite(flat), axis=1)
    adv = np.asarray(x_adv, np.float64).reshape(len(x), -1)
    inside = np.all((adv >= bounds[0] - 1e-6) & (adv <= bounds[1] + 1e-6), axis=1)
    size = {"linf": lambda d: np.abs(d).max(axis=1), "l2": lambda d: np.sqrt((d**2).sum(axis=1)),
            "l1": lambda d: np.abs(d).sum(axis=1)}[norm](np.nan_to_num(flat))
    within = size <= eps * (1 + _TOLERANCE) + 1e-6
    if has_budget:
        return finite & inside & within, within
    return finite & inside, within


def _label(attack, name=None):
    if name is not None:
        return name
    return repr(attack) if len(repr(attack)) <= 60 else type(attack).__name__


def _effective_draws(model, eot_samples):
    per_call = draws_per_call(model)
    return max(-(-eot_samples // per_call), 1) * per_call


def _is_named(item):
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def _kind(attack):
    if isinstance(attack, Transfer):
        return "transfer"
    return "gradient" if getattr(attack, "uses_gradients", True) else "gradient-free"


def _as_list(attacks):
    """`attacks` as a list of entries: one attack or name, a list, or a `{name: attack}` dict."""
    if isinstance(attacks, str) or callable(attacks):
        return [attacks]
    if isinstance(attacks, dict):
        return list(attacks.items())
    return list(attacks)


def _resolve_attacks(attacks, eps, norm, bounds, batch_size, seed, num_classes):
    """Returns `[(name or None, attack)]`, and the threat model's eps and norm."""
    if attacks is None:
        if eps is None:
            raise ValueError("Argument `eps` is required when `attacks` is None (the default "
                             "cascade is built for the threat model). Received: eps=None")
        attacks = default_attacks(norm or "linf", num_classes)
    attacks = _as_list(attacks)
    names = [a[0] if _is_named(a) else None for a in attacks]
    attacks = [a[1] if _is_named(a) else a for a in attacks]
    objects = [a for a in attacks if not isinstance(a, str)]
    if eps is None:
        eps = next((a.eps for a in objects if getattr(a, "eps", None) is not None), None)
        if eps is None:
            raise ValueError("Argument `eps` is required: no attack defines a budget.")
    if norm is None:
        norm = next((a.norm for a in objects if getattr(a, "norm", None)), "linf")
    eps, norm = check_non_negative("eps", eps), check_norm(norm)
    resolved = []
    for i, (name, attack) in enumerate(zip(names, attacks, strict=True)):
        if isinstance(attack, str):
            resolved.append((name or attack.lower(), make_attack(
                attack, eps, norm, bounds=bounds, batch_size=batch_size, seed=seed + i)))
            continue
        if not callable(attack):
            raise ValueError(f"Argument `attacks` must hold attacks or preset names. "
                             f"Received: {attack!r}")
        a_eps = getattr(attack, "eps", None)
        a_norm = getattr(attack, "norm", None) or getattr(attack, "threat_norm", None)
        if a_norm is not None and a_norm != norm or a_eps is not None and a_eps > eps * 1.000001:
            raise ValueError(
                f"Every attack must respect the threat model (norm={norm!r}, eps={eps:g}). "
                f"Received: {attack!r}"
            )
        if tuple(getattr(attack, "bounds", bounds)) != tuple(bounds):
            raise ValueError(f"Attack bounds must equal bounds={bounds}. Received: {attack!r}")
        resolved.append((name, attack))
    return resolved, eps, norm


def _order(resolved, checks_level, eps, norm, bounds, batch_size, seed):
    """Gradient attacks first, then the checklist's baselines, then gradient-free/transfer."""
    gradient = [(n, a, "gradient") for n, a in resolved if _kind(a) == "gradient"]
    others = [(n, a, _kind(a)) for n, a in resolved if _kind(a) != "gradient"]
    baselines = []
    iterative = any(not isinstance(a, FGSM) for _, a, _ in gradient)
    if checks_level != "none" and iterative:
        common = dict(bounds=bounds, batch_size=batch_size, seed=seed + 1000)
        baselines = [("fgsm (E12 baseline)", FGSM(eps=eps, norm=norm, **common), "baseline"),
                     ("noise (E14 baseline)",
                      UniformNoise(eps=eps, norm=norm, num_samples=20, **common), "baseline")]
    return gradient + baselines + others


def _fingerprint(x, y, threat, plan, chunk_size):
    digest = hashlib.sha1(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    text = json.dumps({"data": digest.hexdigest(), "threat": threat, "chunk": chunk_size,
                       "attacks": [repr(a) for _, a, _ in plan]}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _load_state(path, fingerprint):
    if path is None or not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as state:
        if str(state["fingerprint"]) != fingerprint:
            raise ValueError(
                f"Argument `state_path` points to the state of a different evaluation "
                f"(other data, attacks or threat model). Received: state_path={path!r}; delete "
                "it or choose another path."
            )
        return {k: state[k] for k in state.files}


def _save_state(path, state):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **state)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the previous state


def evaluate_robustness(
        model: keras.Model, x: np.ndarray, y: np.ndarray,
        attacks: list | dict | None = None, *,
        eps: float | None = None, norm: str | None = None,
        bounds: tuple[float, float] = (0.0, 1.0), adaptive: bool = True,
        eot_samples: int = 20, num_draws: int | None = None, checks: str = "fast",
        batch_size: int = 256, chunk_size: int = 1000, alpha: float = 0.05, seed: int = 0,
        knowledge: str = "white-box: the attacker knows the model and the defense",
        state_path: str | os.PathLike | None = None, keep_examples: bool = True,
        strategy: tf.distribute.Strategy | None = None,
        verbose: bool = False) -> RobustnessReport:
    """Evaluates a (defended) classifier against a cascade of attacks; returns a report.

    Args:
        model: the full defended Keras classifier (logits or probabilities).
        x: inputs within `bounds`.
        y: integer labels.
        attacks: attack objects and/or preset names (`presets.PRESETS`), run as a cascade;
            an entry may be a `(name, attack)` pair, or `attacks` a `{name: attack}` dict,
            to label it in the report (default label: its repr, or its class name when the
            repr is long). None runs `presets.default_attacks` (APGD-CE, APGD-T, Square for
            L∞/L2).
        eps: the threat model's budget (default: the attacks' own).
        norm: `"linf"`, `"l2"` or `"l1"` (default: the attacks' own).
        bounds: valid input range.
        adaptive: apply BPDA to layers declaring `non_differentiable` and EoT to randomized
            models (declared or detected), as `attacks.adaptive.adaptive_model` does.
        eot_samples: random draws averaged per gradient for randomized models (a model that
            averages several draws per call, like `layers.rbf_defense`, is called fewer
            times; see `attacks.adaptive.adaptive_model`).
        num_draws: votes per re-classification; default 1, or 11 for randomized models.
        checks: `"fast"` (E6, E7, E9, E12–E14, E17: a few extra forward passes),
            `"full"` (adds E10 unbounded attack, E11 security curve, E15 convergence, on
            subsets of at most 200 points) or `"none"`.
        batch_size: examples per compiled attack call.
        chunk_size: examples per cascade pass (the unit of progress and of resuming).
        alpha: error level of the Clopper–Pearson intervals.
        seed: base seed of the preset attacks and baselines.
        knowledge: the attacker's knowledge, recorded in the threat model.
        state_path: `.npz` file where progress is saved after every chunk; an evaluation with
            the same data, attacks and threat model resumes from it.
        keep_examples: keep the worst-case inputs in `report.adversarial_examples`.
        strategy: a `tf.distribute.Strategy` whose replicas run the attacks' batches
            (`MirroredStrategy` for one machine's devices, `MultiWorkerMirroredStrategy`
            across machines, every worker running this same call); per-example results equal
            the single-device run's (see `manidefense.distribute`). None: one device.
        verbose: progress bar over examples.

    Returns:
        A `RobustnessReport`.

    Example:
    >>> report = evaluate_robustness(model, x_test[:1000], y_test[:1000], eps=0.1)
    >>> print(report.to_markdown())
    """
    started = time.time()
    bounds = check_bounds(bounds)
    x = check_images(x, bounds)
    y = check_labels(y, len(x), "y")
    checks_level = check_choice("checks", checks, CHECKS)
    batch_size = check_positive_int("batch_size", batch_size)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    eot_samples = check_positive_int("eot_samples", eot_samples)
    if state_path is not None and not str(state_path).endswith(".npz"):
        raise ValueError(f"Argument `state_path` must end in .npz. Received: {state_path!r}")
    distribute.check_strategy(strategy)
    probe = model(ops.convert_to_tensor(x[:8], dtype="float32"), training=False)
    if len(probe.shape) != 2 or probe.shape[-1] < 2:
        raise ValueError("Argument `model` must return (batch, num_classes) outputs. "
                         f"Received: output shape {tuple(probe.shape)}")
    num_classes = int(probe.shape[-1])
    check_labels(y, len(y), "y", num_classes)
    attacks, unforeseen = _split_unforeseen(attacks, x.shape[1:], bounds, batch_size, seed)
    lp_evaluated = attacks is None or bool(attacks)
    if lp_evaluated:
        resolved, eps, norm = _resolve_attacks(attacks, eps, norm, bounds, batch_size, seed,
                                               num_classes)
    else:
        resolved, eps, norm = [], None, None

    declared = is_randomized(model)
    randomized = declared or checklist.is_output_random(model, x[:16])
    num_draws = check_positive_int("num_draws", num_draws or (11 if randomized else 1))
    if adaptive:
        attack_model, notes = adaptive_model(model, eot_samples, randomized)
    else:
        attack_model, notes = model, ["Adaptive wrappers disabled (adaptive=False)."]
    threat = {"norm": norm, "eps": eps, "bounds": list(bounds), "knowledge": knowledge,
              "adaptive": notes, "randomized": bool(randomized), "num_draws": num_draws,
              "eot_samples": _effective_draws(model, eot_samples) if adaptive and randomized
              else 1}
    plan = (_order(resolved, checks_level, eps, norm, bounds, batch_size, seed)
            if lp_evaluated else [])
    flags, diagnostics = [], {}
    if checks_level != "none":
        flags.append(checklist.check_outputs(output_kind(model, probe)))
        flags.append(checklist.check_randomness(randomized, declared, threat["eot_samples"]))

    with distribute.distributed(strategy):  # every attack below runs on the replicas
        result = _run_cascade(model, attack_model, x, y, plan, threat, num_draws, batch_size,
                              chunk_size, state_path, keep_examples, verbose)
    clean_correct, robust, broken_by, stats, x_worst = result
    n = len(x)
    attacks_out, remaining = [], int(clean_correct.sum())
    for (name, attack, kind), (run_on, broken, invalid, seconds) in zip(plan, stats, strict=True):
        remaining -= int(broken)
        attacks_out.append({"name": _label(attack, name), "kind": kind,
                            "config": _config(attack), "run_on": int(run_on),
                            "broken": int(broken), "invalid": int(invalid),
                            "accuracy_after": remaining / n, "seconds": float(seconds)})

    with distribute.distributed(strategy):
        unforeseen_out = _run_unforeseen(model, attack_model, x, y, clean_correct, unforeseen,
                                         num_draws, batch_size, bounds, alpha, verbose)
    if checks_level != "none" and lp_evaluated:
        flags += _cascade_flags(plan, attacks_out, n)
        if any(kind == "gradient" for _, _, kind in plan):
            subset = np.flatnonzero(clean_correct)[:64]
            if subset.size:
                health = checklist.gradient_health(attack_model, x[subset], y[subset], eps, norm,
                                                bounds, seed=seed)
                diagnostics["gradient_health"] = health
                flags.append(checklist.check_gradients(health))
    if checks_level == "full" and lp_evaluated:
        with distribute.distributed(strategy):
            flags += _full_checks(model, attack_model, x, y, clean_correct, robust, broken_by,
                                  x_worst, plan, attacks_out, threat, num_classes,
                                  num_draws, batch_size, seed, diagnostics)
    meta = {"manidefense": manidefense.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "seed": seed,
            "replicas": 1 if strategy is None else int(strategy.num_replicas_in_sync),
            "model": getattr(model, "name", type(model).__name__),
            "seconds": round(time.time() - started, 2)}
    return RobustnessReport(threat, clean_correct, robust, broken_by, attacks_out,
                            [f for f in flags if f is not None], diagnostics, alpha, meta,
                            x_worst if keep_examples else None, unforeseen_out)


def _split_unforeseen(attacks, image_shape, bounds, batch_size, seed):
    """Separates unforeseen threat models from the Lp cascade: `(lp attacks, [(name, attack)])`.

    Each unforeseen attack is its own threat model, evaluated on its own: its budget is not an
    Lp ball, so it can never join the Lp worst case.
    """
    if attacks is None:
        return None, []
    lp, unforeseen = [], []
    for i, item in enumerate(_as_list(attacks)):
        name, attack = item if _is_named(item) else (None, item)
        if not is_unforeseen(attack):
            lp.append(item)
        elif isinstance(attack, str):
            unforeseen.append((name or attack.lower(), make_unforeseen(
                attack, image_shape, bounds=bounds, batch_size=batch_size, seed=seed + i)))
        else:
            if tuple(getattr(attack, "bounds", bounds)) != tuple(bounds):
                raise ValueError(f"Attack bounds must equal bounds={bounds}. "
                                 f"Received: {attack!r}")
            unforeseen.append((name or _label(attack), attack))
    return lp, unforeseen


def _run_unforeseen(model, attack_model, x, y, clean_correct, unforeseen, num_draws,
                    batch_size, bounds, alpha, verbose):
    """Accuracy under each unforeseen attack alone, on the clean-correct points."""
    results, n = [], len(x)
    alive = np.flatnonzero(clean_correct)
    bar = keras.utils.Progbar(len(unforeseen)) if verbose and unforeseen else None
    for name, attack in unforeseen:
        began = time.time()
        correct = np.zeros(n, bool)
        invalid = 0
        if alive.size:
            x_adv = np.asarray(attack(attack_model, x[alive], y[alive]))
            valid, _ = audit(x[alive], x_adv, 0.0, "linf", bounds, has_budget=False)
            invalid = int((~valid).sum())
            predicted = predict_majority(model, np.where(
                valid.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x[alive]), num_draws,
                batch_size)
            # An invalid result cannot count as a break: the point keeps its clean verdict.
            correct[alive] = (predicted == y[alive]) | ~valid
        count = int(correct.sum())
        low, high = clopper_pearson(count, n, alpha)
        results.append({
            "name": name, "threat_model": attack.threat_model,
            "eps": getattr(attack, "eps", None), "eps_units": attack.eps_units,
            "config": _config(attack), "run_on": int(alive.size), "correct": count,
            "accuracy": count / n, "interval": [low, high], "invalid": invalid,
            "seconds": float(time.time() - began), "per_example": correct.tolist(),
        })
        if bar is not None:
            bar.update(len(results))
    return results


def _config(attack):
    try:
        return json.loads(json.dumps(attack.get_config(), default=str))
    except (AttributeError, TypeError):
        return {"repr": repr(attack)}


def _run_cascade(model, attack_model, x, y, plan, threat, num_draws, batch_size, chunk_size,
                 state_path, keep_examples, verbose):
    n = len(x)
    fingerprint = _fingerprint(x, y, threat, plan, chunk_size)
    state = _load_state(state_path, fingerprint) or {
        "fingerprint": np.array(fingerprint), "done": np.array(0),
        "clean_correct": np.zeros(n, bool), "robust": np.zeros(n, bool),
        "broken_by": np.full(n, -1, np.int64), "stats": np.zeros((len(plan), 4)),
    }
    x_worst = state.get("x_worst", x.copy()) if keep_examples else None
    bar = keras.utils.Progbar(n) if verbose else None
    if bar is not None and int(state["done"]):
        bar.update(int(state["done"]))
    eps, norm, bounds = threat["eps"], threat["norm"], tuple(threat["bounds"])
    for start in range(int(state["done"]), n, chunk_size):
        index = np.arange(start, min(start + chunk_size, n))
        correct = predict_majority(model, x[index], num_draws, batch_size) == y[index]
        state["clean_correct"][index] = correct
        alive = index[correct]
        for i, (_, attack, _) in enumerate(plan):
            if alive.size == 0:
                break
            began = time.time()
            x_adv = np.asarray(attack(attack_model, x[alive], y[alive]))
            seconds = time.time() - began
            has_budget = getattr(attack, "eps", None) is not None
            valid, within = audit(x[alive], x_adv, eps, norm, bounds, has_budget)
            fooled = valid & within & (predict_majority(model, x_adv, num_draws, batch_size)
                                       != y[alive])
            state["broken_by"][alive[fooled]] = i
            if x_worst is not None:
                x_worst[alive[fooled]] = x_adv[fooled]
            state["stats"][i] += (alive.size, fooled.sum(), (~valid).sum(), seconds)
            alive = alive[~fooled]
        state["robust"][alive] = True
        state["done"] = np.array(index[-1] + 1)
        if state_path is not None:
            _save_state(state_path, {**state, **({"x_worst": x_worst} if keep_examples else {})})
        if bar is not None:
            bar.update(int(state["done"]), [("robust_accuracy", state["robust"][:index[-1] + 1]
                                             .mean())])
    return (state["clean_correct"], state["robust"], state["broken_by"], state["stats"],
            x_worst)


def _cascade_flags(plan, attacks_out, n):
    flags, invalid = [], {}
    seen_iterative = False
    for (_, attack, kind), out in zip(plan, attacks_out, strict=True):
        if out["invalid"]:
            invalid[out["name"]] = out["invalid"]
        if kind == "gradient":
            seen_iterative = seen_iterative or not isinstance(attack, FGSM)
        elif seen_iterative and kind == "baseline":
            code = "E12" if isinstance(attack, FGSM) else "E14"
            what = "One-step FGSM" if code == "E12" else "Uniform random noise"
            flags.append(checklist.check_weaker_attack(code, out["broken"], n, what))
        elif seen_iterative:
            flags.append(checklist.check_weaker_attack(
                "E13", out["broken"], n, f"The {kind} attack {out['name']}"))
    flags.append(checklist.check_validity(invalid, n))
    return flags


def _rebuilt(attack, **changes):
    config = {**attack.get_config(), **changes}
    if "step_size" in config and config.get("step_size") and "eps" in changes:
        config["step_size"] = attack.step_size * changes["eps"] / attack.eps
    return type(attack).from_config(config)


def _full_checks(model, attack_model, x, y, clean_correct, robust, broken_by, x_worst, plan,
                 attacks_out, threat, num_classes, num_draws, batch_size, seed, diagnostics):
    eps, norm, bounds = threat["eps"], threat["norm"], tuple(threat["bounds"])
    width, dim = bounds[1] - bounds[0], int(np.prod(x.shape[1:]))
    subset = np.flatnonzero(clean_correct)[:200]
    flags = []

    def accuracy(attack, idx):
        x_adv = np.asarray(attack(attack_model, x[idx], y[idx]))
        return float(np.mean(predict_majority(model, x_adv, num_draws, batch_size) == y[idx]))

    if subset.size:
        # E10: a budget covering the whole box must break (almost) everything.
        unbounded = {"linf": width, "l2": width * dim**0.5, "l1": width * dim}[norm]
        e10 = accuracy(PGD(eps=unbounded, norm=norm, num_steps=50, loss="margin",
                           bounds=bounds, batch_size=batch_size, seed=seed), subset[:100])
        diagnostics["unbounded_accuracy"] = e10
        flags.append(checklist.check_unbounded(e10, num_classes))
        # E11: the security curve of the first gradient attack.
        first = next((a for _, a, k in plan if k == "gradient" and hasattr(a, "get_config")
                      and getattr(a, "eps", None)), None)
        if first is not None:
            values = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
            curve = [accuracy(_rebuilt(first, eps=e), subset) for e in values]
            diagnostics["security_curve"] = {"attack": _label(first), "eps": values,
                                             "accuracy": curve, "n": int(subset.size)}
            flags.append(checklist.check_monotone(values, curve, subset.size))
    # E15: rerun the most successful gradient attack, 5× the steps and two restarts more.
    ran = zip(plan, attacks_out[:len(plan)], strict=True)
    candidates = [(out["broken"], a) for (_, a, k), out in ran
                  if k == "gradient" and hasattr(a, "num_steps") and hasattr(a, "num_restarts")]
    survivors = np.flatnonzero(robust)[:200]
    if candidates and survivors.size:
        strongest = max(candidates, key=lambda c: c[0])[1]
        stronger = _rebuilt(strongest, num_steps=5 * strongest.num_steps,
                            num_restarts=strongest.num_restarts + 2,
                            seed=None if strongest.seed is None else strongest.seed + 7)
        began = time.time()
        x_adv = np.asarray(stronger(attack_model, x[survivors], y[survivors]))
        seconds = time.time() - began
        valid, within = audit(x[survivors], x_adv, eps, norm, bounds)
        fooled = valid & within & (predict_majority(model, x_adv, num_draws, batch_size)
                                   != y[survivors])
        # Scale the share broken in the subset to all survivors, then to n.
        extra = int(round(fooled.mean() * robust.sum()))
        diagnostics["convergence"] = {"attack": _label(stronger), "run_on": int(survivors.size),
                                      "broken": int(fooled.sum()), "estimated_extra": extra}
        robust[survivors[fooled]] = False
        broken_by[survivors[fooled]] = len(plan)
        if x_worst is not None:
            x_worst[survivors[fooled]] = x_adv[fooled]
        if fooled.any():
            attacks_out.append({"name": f"{_label(stronger)} (E15 convergence check)",
                                "kind": "gradient", "config": _config(stronger),
                                "run_on": int(survivors.size), "broken": int(fooled.sum()),
                                "invalid": int((~valid).sum()),
                                "accuracy_after": float(robust.mean()), "seconds": seconds})
        flags.append(checklist.check_convergence(extra, len(x)))
    return flags
