"""`RobustnessReport`: what was attacked, how, what survived, and what to distrust."""

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from manidefense.evaluation.checks import SEVERITIES, Flag
from manidefense.stats import clopper_pearson

_NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}


class RobustnessReport:
    """The result of `evaluate_robustness`, serializable to a dict, JSON and Markdown.

    Attributes:
        threat_model: dict with `norm`, `eps`, `bounds`, `knowledge` (what the attacker knows),
            `adaptive` (sentences saying which BPDA/EoT wrappers were applied), `randomized`,
            `num_draws` (votes per re-classification).
        clean_correct, robust: boolean arrays, one entry per evaluated example (robust means
            correctly classified under every attack).
        broken_by: int array, index into `attacks` of the attack that first broke the example,
            -1 when none did (or the example was misclassified clean).
        attacks: one dict per attack run, in cascade order: `name`, `kind`, `config`,
            `run_on`, `broken`, `invalid`, `accuracy_after`, `seconds`.
        flags: list of checklist `Flag`s.
        diagnostics: measurements behind the flags (gradient health, security curve, ...).
        alpha: error level of the Clopper–Pearson intervals (0.05: 95% intervals).
        meta: versions, seed, model name, wall time.
        adversarial_examples: the worst-case inputs (x where nothing broke the example), or
            None; kept out of `to_dict` (save them with `numpy.save`).
        unforeseen: one dict per unforeseen threat model (fog, snow, JPEG, spatial, ...),
            each evaluated alone and never part of the Lp worst case: `name`,
            `threat_model`, `eps`, `eps_units`, `config`, `run_on`, `correct`, `accuracy`,
            `interval`, `invalid`, `seconds`, `per_example` (correct under that attack).
        lp_evaluated: False when only unforeseen attacks ran; `robust_accuracy` is then None.

    Example:
    >>> report = manidefense.evaluation.evaluate_robustness(
    ...     model, x, y, attacks=["pgd"], eps=0.1, norm="linf")
    >>> report.robust_accuracy <= report.clean_accuracy
    True
    >>> text = report.to_markdown()  # the table, the attacks and the checklist flags
    >>> same = RobustnessReport.from_json(report.to_json())
    """

    def __init__(self, threat_model: Mapping[str, Any], clean_correct: ArrayLike, robust: ArrayLike,
                 broken_by: ArrayLike, attacks: Iterable[Mapping[str, Any]],
                 flags: Iterable[Flag | Mapping[str, str]] = (),
                 diagnostics: Mapping[str, Any] | None = None, alpha: float = 0.05,
                 meta: Mapping[str, Any] | None = None,
                 adversarial_examples: np.ndarray | None = None,
                 unforeseen: Iterable[Mapping[str, Any]] = ()):
        self.threat_model = dict(threat_model)
        self.clean_correct = np.asarray(clean_correct, dtype=bool)
        self.robust = np.asarray(robust, dtype=bool)
        self.broken_by = np.asarray(broken_by, dtype=np.int64)
        self.attacks = [dict(a) for a in attacks]
        self.flags = [f if isinstance(f, Flag) else Flag(**f) for f in flags]
        self.diagnostics = dict(diagnostics or {})
        self.alpha = float(alpha)
        self.meta = dict(meta or {})
        self.adversarial_examples = adversarial_examples
        self.unforeseen = [dict(u) for u in unforeseen]

    @property
    def lp_evaluated(self) -> bool:
        """False when only unforeseen attacks ran (no Lp threat model)."""
        return self.threat_model.get("norm") is not None

    # === Numbers ===

    @property
    def num_examples(self) -> int:
        """Number of evaluated examples."""
        return int(self.clean_correct.size)

    @property
    def clean_accuracy(self) -> float:
        """Share of examples classified correctly without attack."""
        return float(np.mean(self.clean_correct))

    @property
    def robust_accuracy(self) -> float | None:
        """Worst case over all Lp attacks, per example (None when no Lp attack ran)."""
        return float(np.mean(self.robust)) if self.lp_evaluated else None

    def interval(self, correct: int) -> tuple[float, float]:
        """Clopper–Pearson `(low, high)` at level `1 - alpha` for a count of correct points.

        Args:
            correct: number of correct examples out of `num_examples`.

        Returns:
            `(low, high)`, Python floats.

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> low, high = report.interval(2)  # 2 of 4 correct
        >>> round(low, 3), round(high, 3)
        (0.068, 0.932)
        """
        return clopper_pearson(int(correct), self.num_examples, self.alpha)

    @property
    def clean_interval(self) -> tuple[float, float]:
        """Clopper–Pearson interval of `clean_accuracy`."""
        return self.interval(self.clean_correct.sum())

    @property
    def robust_interval(self) -> tuple[float, float] | None:
        """Clopper–Pearson interval of `robust_accuracy` (None when no Lp attack ran)."""
        return self.interval(self.robust.sum()) if self.lp_evaluated else None

    @property
    def trustworthy(self) -> bool:
        """False when any error-level flag was raised."""
        return not any(f.severity == "error" for f in self.flags)

    # === Serialization ===

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (without `adversarial_examples`).

        Returns:
            A dict with the summary numbers, `attacks`, `flags`, `diagnostics`, `meta`,
            `unforeseen` and `per_example` (the boolean and index arrays as lists).

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> d = report.to_dict()
        >>> d["robust_accuracy"], d["per_example"]["broken_by"]
        (0.25, [-1, 0, 0, -1])
        """
        clean_low, clean_high = self.clean_interval
        robust_low, robust_high = self.robust_interval or (None, None)
        return {
            "threat_model": self.threat_model,
            "num_examples": self.num_examples,
            "alpha": self.alpha,
            "clean_accuracy": self.clean_accuracy,
            "clean_interval": [clean_low, clean_high],
            "robust_accuracy": self.robust_accuracy,
            "robust_interval": None if robust_low is None else [robust_low, robust_high],
            "trustworthy": self.trustworthy,
            "attacks": self.attacks,
            "flags": [f.to_dict() for f in self.flags],
            "diagnostics": self.diagnostics,
            "meta": self.meta,
            "unforeseen": self.unforeseen,
            "per_example": {"clean_correct": self.clean_correct.tolist(),
                            "robust": self.robust.tolist(),
                            "broken_by": self.broken_by.tolist()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RobustnessReport":
        """Rebuilds a report from `to_dict()`'s output.

        Args:
            d: a dict as returned by `to_dict` (or read from its JSON).

        Returns:
            A `RobustnessReport` with the same numbers and flags.

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> RobustnessReport.from_dict(report.to_dict()).robust_accuracy
        0.25
        """
        per = d["per_example"]
        return cls(d["threat_model"], per["clean_correct"], per["robust"], per["broken_by"],
                   d["attacks"], d["flags"], d.get("diagnostics"), d.get("alpha", 0.05),
                   d.get("meta"), unforeseen=d.get("unforeseen", ()))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Returns the report as JSON text, also writing it to `path` when given.

        Args:
            path: optional file to write.

        Returns:
            The JSON text.

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> text = report.to_json()  # or report.to_json("report.json")
        >>> text.startswith("{")
        True
        """
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "RobustnessReport":
        """Reads a report written by `to_json`.

        Args:
            path_or_text: a JSON file's path, or the JSON text itself.

        Returns:
            A `RobustnessReport`.

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> RobustnessReport.from_json(report.to_json()).clean_accuracy
        0.75
        """
        text = path_or_text
        if not str(path_or_text).lstrip().startswith("{"):
            with open(path_or_text, encoding="utf-8") as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    # === Presentation ===

    def to_markdown(self) -> str:
        """The report as Markdown: threat model, accuracies with intervals, the attack
        cascade, unforeseen threat models, checklist flags and a verdict (Jupyter renders it).

        Returns:
            Markdown text.

        Example:
        >>> report = RobustnessReport(
        ...     threat_model={"norm": "linf", "eps": 0.1, "bounds": (0.0, 1.0)},
        ...     clean_correct=[True, True, True, False], robust=[True, False, False, False],
        ...     broken_by=[-1, 0, 0, -1],
        ...     attacks=[{"name": "PGD", "kind": "white-box", "run_on": 3, "broken": 2,
        ...               "accuracy_after": 0.25, "seconds": 1.5}])
        >>> print(report.to_markdown().splitlines()[0])
        ## Robustness report
        """
        tm = self.threat_model
        level = f"{1 - self.alpha:.0%}"
        lines = ["## Robustness report", ""]
        if self.lp_evaluated:
            lines.append(
                f"**Threat model**: {_NORM_NAMES.get(tm['norm'], tm['norm'])} ball, "
                f"eps = {tm['eps']:g}, inputs in [{tm['bounds'][0]:g}, {tm['bounds'][1]:g}]; "
                f"{tm.get('knowledge', 'white-box')}.")
        else:
            lines.append(
                f"**Threat model**: no Lp attack was run; only the unforeseen threat models "
                f"below, inputs in [{tm['bounds'][0]:g}, {tm['bounds'][1]:g}]; "
                f"{tm.get('knowledge', 'white-box')}.")
        for note in tm.get("adaptive") or ["No adaptive wrapper was needed."]:
            lines.append(f"- {note}")
        lines += [
            "",
            f"| n = {self.num_examples} | accuracy | {level} interval |",
            "|---|---|---|",
            f"| clean | {self.clean_accuracy:.1%} | {_interval(self.clean_interval)} |",
        ]
        if self.lp_evaluated:
            lines += [
                f"| robust (worst case) | **{self.robust_accuracy:.1%}** | "
                f"{_interval(self.robust_interval)} |",
                "",
                "| # | attack | kind | run on | broke | accuracy after | seconds |",
                "|---|---|---|---|---|---|---|",
            ]
            for i, a in enumerate(self.attacks):
                invalid = f" ({a['invalid']} invalid)" if a.get("invalid") else ""
                lines.append(f"| {i + 1} | {a['name']} | {a['kind']} | {a['run_on']} | "
                             f"{a['broken']}{invalid} | {a['accuracy_after']:.1%} | "
                             f"{a['seconds']:.1f} |")
        if self.unforeseen:
            lines += [
                "",
                "**Unforeseen threat models** (each evaluated alone; not part of the Lp worst "
                "case, since their budgets are not Lp balls):",
                "",
                f"| threat model | attack | eps (units) | accuracy | {level} interval | seconds |",
                "|---|---|---|---|---|---|",
            ]
            for u in self.unforeseen:
                eps = "—" if u.get("eps") is None else f"{u['eps']:g}"
                invalid = f" ({u['invalid']} invalid)" if u.get("invalid") else ""
                lines.append(f"| {u['threat_model']} | {u['name']} | {eps} ({u['eps_units']}) | "
                             f"{u['accuracy']:.1%}{invalid} | {_interval(u['interval'])} | "
                             f"{u['seconds']:.1f} |")
        lines += ["", "**Checklist flags**" + ("" if self.flags else ": none raised."), ""]
        for f in sorted(self.flags, key=lambda f: (SEVERITIES.index(f.severity), int(f.code[1:]))):
            lines.append(f"- **{f.code} ({f.severity})** {f.message} *What to do:* {f.advice}")
        verdict = ("No error-level flag: the number is as trustworthy as the attacks run."
                   if self.trustworthy else
                   "**Untrustworthy**: error-level flags above; treat the robust accuracy as "
                   "an upper bound at best.")
        lines += ["", verdict]
        if self.meta:
            lines += ["", "<sub>" + ", ".join(f"{k}: {v}" for k, v in self.meta.items()
                                              if not isinstance(v, dict)) + "</sub>"]
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self):
        return self.to_markdown()

    def __repr__(self):
        robust = "not evaluated"
        if self.lp_evaluated:
            low, high = self.robust_interval
            robust = f"{self.robust_accuracy:.1%} [{low:.1%}, {high:.1%}]"
        unforeseen = "".join(f", {u['name']}={u['accuracy']:.1%}" for u in self.unforeseen)
        return (f"RobustnessReport(n={self.num_examples}, clean={self.clean_accuracy:.1%}, "
                f"robust={robust}{unforeseen}, flags={[f.code for f in self.flags]})")


def _interval(bounds):
    return f"[{bounds[0]:.1%}, {bounds[1]:.1%}]"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return repr(value)
