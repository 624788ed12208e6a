"""Attacks by name, for the CLI and `evaluate_robustness(attacks=["apgd-ce", ...])`.

Each preset is a strong configuration for evaluation (more steps than the attack classes'
training-friendly defaults). Names are lower-case; see `PRESETS`.
"""

from collections.abc import Sequence

from manidefense import attacks as _attacks
from manidefense.attacks.base import Attack
from manidefense.attacks.wrappers import RunnerUpTargets


def _get(name):
    cls = getattr(_attacks, name, None)
    if cls is None:
        raise ValueError(f"The attack class {name} is not available in this version.")
    return cls


def _norm_ok(norm, allowed, preset):
    if norm not in allowed:
        raise ValueError(
            f"Attack preset {preset!r} supports norms {allowed}. Received: norm={norm!r}"
        )


def make_attack(name: str, eps: float, norm: str, *, bounds: tuple[float, float] = (0.0, 1.0),
                batch_size: int = 256, seed: int | None = None) -> Attack | RunnerUpTargets:
    """Builds the preset attack `name` for the threat model (`eps`, `norm`, `bounds`).

    Args:
        name: one of `PRESETS` (case-insensitive).
        eps: the budget, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"` (each preset accepts some of them).
        bounds: the valid input range.
        batch_size: examples per compiled call.
        seed: int or None.

    Returns:
        An attack following the attack contract (`"apgd-t"` is a `RunnerUpTargets`).

    Example:
    >>> make_attack("apgd-ce", eps=8 / 255, norm="linf", seed=0)
    APGD(eps=0.0313..., norm='linf', num_steps=100, rho=0.75, alpha=0.75, ...)
    >>> x_adv = make_attack("fgsm", eps=0.1, norm="linf")(model, x, y)
    """
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"Argument `attacks` must name presets from {sorted(PRESETS)}. "
                         f"Received: {name!r}")
    common = dict(bounds=bounds, batch_size=batch_size, seed=seed)
    return PRESETS[key](eps, norm, common)


def _apgd(loss):
    def build(eps, norm, common):
        _norm_ok(norm, ("linf", "l2"), f"apgd-{loss}")
        return _get("APGD")(eps=eps, norm=norm, num_steps=100, loss=loss, **common)
    return build


def _apgd_t(eps, norm, common):
    _norm_ok(norm, ("linf", "l2"), "apgd-t")
    return RunnerUpTargets(_get("APGD")(eps=eps, norm=norm, num_steps=100, loss="dlr", **common),
                           num_targets=3)


def _square(eps, norm, common):
    _norm_ok(norm, ("linf", "l2"), "square")
    return _get("Square")(eps=eps, norm=norm, num_queries=1000, **common)


def _minimum_distance(class_name, threat_norm, eps, norm, common):
    # Minimum-distance attacks return x for points they cannot break within eps.
    _norm_ok(norm, (threat_norm,), class_name)
    steps = {} if class_name == "CarliniWagnerLinf" else {"num_steps": 200}
    return _get(class_name)(eps=eps, **steps, **common)


#: Preset name -> builder `(eps, norm, common) -> attack`; `sorted(PRESETS)` lists the names.
PRESETS = {
    "fgsm": lambda eps, norm, c: _attacks.FGSM(eps=eps, norm=norm, **c),
    "pgd": lambda eps, norm, c: _attacks.PGD(eps=eps, norm=norm, num_steps=50, **c),
    "pgd-margin": lambda eps, norm, c: _attacks.PGD(eps=eps, norm=norm, num_steps=50,
                                                    loss="margin", **c),
    "mifgsm": lambda eps, norm, c: _attacks.MIFGSM(eps=eps, norm=norm, num_steps=20, **c),
    "apgd-ce": _apgd("ce"),
    "apgd-dlr": _apgd("dlr"),
    "apgd-t": _apgd_t,
    "square": _square,
    "spsa": lambda eps, norm, c: _get("SPSA")(eps=eps, norm=norm, num_steps=100, **c),
    "cw-l2": lambda eps, norm, c: _minimum_distance("CarliniWagnerL2", "l2", eps, norm, c),
    "cw-linf": lambda eps, norm, c: _minimum_distance("CarliniWagnerLinf", "linf", eps, norm, c),
    "ead": lambda eps, norm, c: _minimum_distance("EAD", "l1", eps, norm, c),
    "noise": lambda eps, norm, c: _attacks.UniformNoise(eps=eps, norm=norm, num_samples=20, **c),
}


# === Unforeseen threat models: each its own, never mixed into the Lp worst case ===

def _unforeseen(class_name, **settings):
    def build(eps, common):
        chosen = dict(settings) if eps is None else {**settings, "eps": eps}
        return _get(class_name)(**{**chosen, **common})  # `common` may override num_steps
    return build


#: Unforeseen preset name -> builder `(eps, common) -> attack` (eps None: the default).
UNFORESEEN = {
    "fog": _unforeseen("Fog", num_steps=100),
    "snow": _unforeseen("Snow", num_steps=100),
    "gabor": _unforeseen("Gabor", num_steps=100),
    "elastic": _unforeseen("Elastic", num_steps=100),
    "jpeg-linf": _unforeseen("JPEG", norm="linf", num_steps=100),
    "jpeg-l2": _unforeseen("JPEG", norm="l2", num_steps=100),
    "jpeg-l1": _unforeseen("JPEG", norm="l1", num_steps=100),
    "stadv": _unforeseen("StAdv", num_steps=100),
    "spatial": lambda eps, common: _get("Spatial")(search="grid", **common),
}


def is_unforeseen(attack: str | Attack) -> bool:
    """True for an unforeseen preset name or an attack with its own `threat_model`.

    Args:
        attack: a preset name or an attack object.

    Returns:
        Whether it is an unforeseen threat model (reported apart from the Lp worst case).

    Example:
    >>> is_unforeseen("fog"), is_unforeseen("pgd"), is_unforeseen(manidefense.attacks.Snow())
    (True, False, True)
    """
    if isinstance(attack, str):
        return attack.lower() in UNFORESEEN
    return getattr(attack, "threat_model", None) is not None


def make_unforeseen(name: str, image_shape: Sequence[int], *, eps: float | None = None,
                    bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
                    seed: int | None = None) -> Attack:
    """Builds the unforeseen attack `name` at `eps` (its own units).

    Args:
        name: one of `UNFORESEEN`.
        image_shape: `(H, W, C)` of the inputs; without `eps`, the calibrated medium eps for
            that shape (the fourth of the six in `evaluation.uar.load_calibration`) is used
            when the shipped table has one, else the attack's default.
        eps: the attack's strength in its own units (see each attack's `eps_units`).
        bounds: the valid input range.
        batch_size: examples per compiled call.
        seed: int or None.

    Returns:
        An attack with a `threat_model` attribute.

    Example:
    >>> fog = make_unforeseen("fog", (28, 28, 1))  # the calibrated medium eps
    >>> fog.threat_model, fog.eps, fog.eps_units
    ('fog', 1.0, 'fog strength (unit pixel values)')
    """
    key = str(name).lower()
    if key not in UNFORESEEN:
        raise ValueError(f"Argument `attacks` must name unforeseen presets from "
                         f"{sorted(UNFORESEEN)}. Received: {name!r}")
    if eps is None and key != "spatial":
        eps = medium_eps(key, image_shape)
    common = dict(bounds=bounds, batch_size=batch_size, seed=seed)
    return UNFORESEEN[key](eps, common)


def medium_eps(name: str, image_shape: Sequence[int]) -> float | None:
    """The calibrated medium eps (fourth of six) of `name` for `image_shape`, or None.

    Args:
        name: one of `UNFORESEEN`.
        image_shape: `(H, W, C)` of the inputs.

    Returns:
        The eps, or None when the shipped calibration has no entry for this shape.

    Example:
    >>> medium_eps("fog", (28, 28, 1)), medium_eps("fog", (64, 64, 3))
    (1.0, None)
    """
    from manidefense.evaluation.uar import load_calibration

    try:
        table = load_calibration(tuple(image_shape))
    except ValueError:
        return None
    entry = table.get(name)
    return None if entry is None else entry["eps"][3]


def default_attacks(norm: str, num_classes: int) -> list[str]:
    """The default cascade: AutoAttack's recipe where its parts exist for `norm`.

    L∞/L2: APGD-CE, then APGD-T over three runner-up classes (APGD-DLR with three classes,
    which DLR-T needs four for; PGD on the margin loss with two, which DLR needs three for),
    then Square (gradient-free). L1: PGD with cross-entropy and with the margin loss.

    Args:
        norm: `"linf"`, `"l2"` or `"l1"`.
        num_classes: the model's number of classes.

    Returns:
        A list of preset names, in the order the evaluation runs them.

    Example:
    >>> default_attacks("linf", num_classes=10), default_attacks("l1", num_classes=10)
    (['apgd-ce', 'apgd-t', 'square'], ['pgd', 'pgd-margin'])
    """
    if norm in ("linf", "l2") and hasattr(_attacks, "APGD"):
        second = {2: "pgd-margin", 3: "apgd-dlr"}.get(num_classes, "apgd-t")
        names = ["apgd-ce", second]
    else:
        names = ["pgd", "pgd-margin"]
    if norm in ("linf", "l2") and hasattr(_attacks, "Square"):
        names.append("square")
    return names
