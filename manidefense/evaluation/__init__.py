"""Honest evaluation: attack cascades, the per-example worst case, checklist flags, reports."""

from manidefense.evaluation import checks, presets, uar
from manidefense.evaluation.checks import Flag
from manidefense.evaluation.presets import PRESETS, default_attacks, make_attack
from manidefense.evaluation.report import RobustnessReport
from manidefense.evaluation.robustness import evaluate_robustness, predict_majority
from manidefense.evaluation.uar import calibrate_eps, load_calibration, save_calibration, uar_table

__all__ = ["Flag", "PRESETS", "RobustnessReport", "calibrate_eps", "checks", "default_attacks",
           "evaluate_robustness", "load_calibration", "make_attack", "predict_majority",
           "presets", "save_calibration", "uar", "uar_table"]
