"""Honest evaluation: attack cascades, the per-example worst case, checklist flags, reports."""

from manidefense.evaluation import checks, presets
from manidefense.evaluation.checks import Flag
from manidefense.evaluation.presets import PRESETS, default_attacks, make_attack
from manidefense.evaluation.report import RobustnessReport
from manidefense.evaluation.robustness import evaluate_robustness, predict_majority

__all__ = ["Flag", "PRESETS", "RobustnessReport", "checks", "default_attacks",
           "evaluate_robustness", "make_attack", "predict_majority", "presets"]
