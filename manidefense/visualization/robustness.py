"""Plots of robustness reports: security curves and per-attack bars.

They take a `RobustnessReport`, its `to_dict()`, or plain arrays, and never run a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from manidefense.visualization.images import _figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from manidefense.evaluation.report import RobustnessReport


def _as_dict(report):
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def plot_security_curve(curves: RobustnessReport | Mapping[str, Any], ax: Axes | None = None,
                        title: str = "Security curve") -> Axes:
    """Accuracy against the budget eps, one line per attack (checklist E11).

    Args:
        curves: a report (its `diagnostics["security_curve"]` is drawn) or a dict
            `{attack name: (eps_values, accuracies)}`.
        ax: matplotlib Axes to draw on; a new figure when None.
        title: axes title.

    Returns:
        The matplotlib Axes (`ax.figure.savefig(...)` saves it).

    Example:
    >>> ax = plot_security_curve({"PGD": ([0.0, 0.05, 0.1], [0.96, 0.55, 0.05])})
    """
    if hasattr(curves, "to_dict") or "diagnostics" in curves:
        curve = _as_dict(curves).get("diagnostics", {}).get("security_curve")
        if curve is None:
            raise ValueError("The report has no security curve: evaluate with checks='full'.")
        curves = {curve["attack"]: (curve["eps"], curve["accuracy"])}
    if ax is None:
        ax = _figure((4.5, 3.2)).add_subplot()
    for name, (eps, accuracy) in curves.items():
        ax.plot(np.asarray(eps), 100 * np.asarray(accuracy), marker="o", label=str(name))
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_attack_bars(report: RobustnessReport | Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Accuracy after each attack of the cascade, with clean accuracy first (checklist E4).

    Bars fall monotonically: each attack only adds the points it broke. The worst case is
    the last bar, drawn with its Clopper–Pearson interval.

    Args:
        report: a `RobustnessReport` or its `to_dict()`.
        ax: matplotlib Axes to draw on; a new figure when None.

    Returns:
        The matplotlib Axes.

    Example:
    >>> report = manidefense.evaluation.evaluate_robustness(
    ...     model, x, y, attacks=["fgsm", "pgd"], eps=0.1, norm="linf")
    >>> ax = manidefense.visualization.plot_attack_bars(report)
    >>> [tick.get_text() for tick in ax.get_xticklabels()][:3]  # then the checklist baselines
    ['clean', 'fgsm', 'pgd']
    >>> ax.figure.savefig("attack_bars.png")  # doctest: +SKIP
    """
    d = _as_dict(report)
    if d.get("robust_interval") is None:
        raise ValueError("Argument `report` holds no Lp evaluation (only unforeseen threat "
                         "models ran); plot those with `plot_accuracy_vs_eps`.")
    names = ["clean"] + [a["name"] for a in d["attacks"]]
    values = [d["clean_accuracy"]] + [a["accuracy_after"] for a in d["attacks"]]
    if ax is None:
        ax = _figure((1.2 + 0.7 * len(names), 3.2)).add_subplot()
    positions = np.arange(len(names))
    ax.bar(positions, 100 * np.asarray(values), color=["#888888"] + ["#c0504d"] * (len(names) - 1))
    low, high = d["robust_interval"]
    robust = d["robust_accuracy"]
    ax.errorbar([positions[-1]], [100 * robust],
                yerr=[[100 * (robust - low)], [100 * (high - robust)]], color="black", capsize=4)
    ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy after attack (%)")
    ax.set_ylim(0, 100)
    tm = d["threat_model"]
    ax.set_title(f"{tm['norm']} eps={tm['eps']:g}: robust {100 * robust:.1f}%", fontsize=9)
    return ax
