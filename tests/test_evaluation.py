"""evaluate_robustness: the cascade's bookkeeping, adaptive wrapping, resuming, and every flag."""

import json

import keras
import numpy as np
import pytest
from conftest import SHAPE, accuracy, lp
from test_adaptive import NoisyLogits, Quantize

import manidefense as md
from manidefense.attacks import FGSM, PGD, Attack, Transfer
from manidefense.evaluation import RobustnessReport, evaluate_robustness
from manidefense.evaluation import checks as C

EPS = 0.05  # leaves the fixture model about half its accuracy under PGD


def codes(report, severity=None):
    return {f.code for f in report.flags if severity is None or f.severity == severity}


@pytest.fixture(scope="module")
def pgd_report(trained_model, data):
    _, _, x, y = data
    return evaluate_robustness(trained_model, x[:96], y[:96], ["pgd"], eps=EPS, seed=0)


def test_report_bookkeeping_is_consistent(trained_model, data, pgd_report):
    _, _, x, y = data
    r = pgd_report
    assert r.clean_accuracy == pytest.approx(accuracy(trained_model, x[:96], y[:96]))
    np.testing.assert_array_equal(r.robust, r.clean_correct & (r.broken_by == -1))
    assert 0.1 < r.robust_accuracy < r.clean_accuracy
    # Every counted adversarial example is within the budget, in bounds, and misclassified.
    broken = r.broken_by >= 0
    x_adv = r.adversarial_examples
    assert np.all(lp(x_adv - x[:96], "linf") <= EPS + 1e-6) and x_adv.min() >= 0
    predicted = np.argmax(trained_model.predict(x_adv, verbose=0), -1)
    assert np.all(predicted[broken] != y[:96][broken])
    np.testing.assert_array_equal(x_adv[~broken], x[:96][~broken])
    # The cascade's accounting adds up and accuracy only falls along it.
    after = [a["accuracy_after"] for a in r.attacks]
    assert after == sorted(after, reverse=True)
    assert after[-1] == pytest.approx(r.robust_accuracy)
    assert sum(a["broken"] for a in r.attacks) == int(broken.sum())
    assert r.attacks[0]["run_on"] == int(r.clean_correct.sum())
    # The checklist baselines ran after PGD, on its survivors only.
    assert [a["kind"] for a in r.attacks] == ["gradient", "baseline", "baseline"]
    assert r.attacks[1]["run_on"] == r.attacks[0]["run_on"] - r.attacks[0]["broken"]


def test_worst_case_is_the_union_of_attacks(trained_model, data):
    # FGSM is deterministic per example, so standalone runs give the exact sets to compare.
    _, _, x, y = data
    x, y = x[:64], y[:64]
    weak, strong = FGSM(eps=0.02), FGSM(eps=0.05, loss="margin")
    r = evaluate_robustness(trained_model, x, y, [weak, strong], eps=0.05, checks="none")

    def fooled(attack):
        return np.argmax(trained_model.predict(attack(trained_model, x, y), verbose=0), -1) != y

    expected = r.clean_correct & ~fooled(weak) & ~fooled(strong)
    np.testing.assert_array_equal(r.robust, expected)


def test_attacks_can_be_named(trained_model, data):
    _, _, x, y = data
    named = {"weak fgsm": FGSM(eps=0.02), "margin fgsm": FGSM(eps=0.05, loss="margin")}
    r = evaluate_robustness(trained_model, x[:16], y[:16], named, eps=0.05, checks="none")
    assert [a["name"] for a in r.attacks] == ["weak fgsm", "margin fgsm"]
    r = evaluate_robustness(trained_model, x[:16], y[:16], [("first", "fgsm"), "fgsm"],
                            eps=0.05, checks="none")
    assert [a["name"] for a in r.attacks] == ["first", "fgsm"]


def test_report_serializes_to_json_and_markdown(pgd_report, tmp_path):
    path = tmp_path / "report.json"
    text = pgd_report.to_json(path)
    restored = RobustnessReport.from_json(str(path))
    assert json.loads(text)["robust_accuracy"] == pytest.approx(pgd_report.robust_accuracy)
    np.testing.assert_array_equal(restored.robust, pgd_report.robust)
    assert restored.robust_interval == pytest.approx(pgd_report.robust_interval)
    assert [f.code for f in restored.flags] == [f.code for f in pgd_report.flags]
    md_text = pgd_report.to_markdown()
    assert "robust (worst case)" in md_text and "| 1 | pgd | gradient |" in md_text
    assert f"{pgd_report.robust_accuracy:.1%}" in md_text
    low, high = pgd_report.robust_interval
    assert low <= pgd_report.robust_accuracy <= high
    assert pgd_report.to_dict()["threat_model"]["eps"] == EPS


class _Interrupt(Attack):
    """FGSM that raises on its `fail_on`-th call: a crash in the middle of an evaluation."""

    def __init__(self, fail_on=None, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.calls, self.fail_on = FGSM(eps=EPS), 0, fail_on
        self.eps, self.norm = EPS, "linf"

    def __call__(self, model, x, y, target=None):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("interrupted")
        return self.inner(model, x, y)

    def __repr__(self):
        return "Interrupt()"


def test_resumes_from_a_state_file(trained_model, data, tmp_path):
    _, _, x, y = data
    state = str(tmp_path / "state.npz")
    kwargs = dict(eps=EPS, checks="none", chunk_size=32, state_path=state)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_robustness(trained_model, x[:96], y[:96], [_Interrupt(fail_on=3)], **kwargs)
    assert int(np.load(state)["done"]) == 64  # two chunks were saved before the crash
    resumed_attack = _Interrupt()
    resumed = evaluate_robustness(trained_model, x[:96], y[:96], [resumed_attack], **kwargs)
    assert resumed_attack.calls == 1  # only the last chunk ran again
    fresh = evaluate_robustness(trained_model, x[:96], y[:96], [_Interrupt()], eps=EPS,
                                checks="none", chunk_size=32)
    np.testing.assert_array_equal(resumed.robust, fresh.robust)
    np.testing.assert_array_equal(resumed.adversarial_examples, fresh.adversarial_examples)
    with pytest.raises(ValueError, match="state_path"):
        evaluate_robustness(trained_model, x[:90], y[:90], [_Interrupt()], **kwargs)


def test_bad_arguments_are_named(trained_model, data):
    _, _, x, y = data
    with pytest.raises(ValueError, match="`eps`"):
        evaluate_robustness(trained_model, x[:8], y[:8])
    with pytest.raises(ValueError, match="threat model"):
        evaluate_robustness(trained_model, x[:8], y[:8], [PGD(eps=0.2)], eps=0.1)
    with pytest.raises(ValueError, match="`checks`"):
        evaluate_robustness(trained_model, x[:8], y[:8], ["pgd"], eps=0.1, checks="some")
    with pytest.raises(ValueError, match="`attacks`"):
        evaluate_robustness(trained_model, x[:8], y[:8], ["no-such-attack"], eps=0.1)
    with pytest.raises(ValueError, match="`y`"):
        evaluate_robustness(trained_model, x[:8], y[:8] + 10, ["pgd"], eps=0.1)
    with pytest.raises(ValueError, match="`x`"):
        evaluate_robustness(trained_model, x[:8] + 2, y[:8], ["pgd"], eps=0.1)


# === Adaptive wrapping ===


def quantized(model, declared=True):
    layer = Quantize(levels=4)
    if not declared:
        layer.non_differentiable = False  # the layer hides what it is
    return keras.Sequential([keras.Input(SHAPE), layer, model])


def test_bpda_applied_automatically_and_e9_flags_the_plain_run(trained_model, data):
    _, _, x, y = data
    x, y = x[:64], y[:64]
    defended = quantized(trained_model)
    plain = evaluate_robustness(defended, x, y, ["pgd"], eps=0.1, adaptive=False)
    adaptive = evaluate_robustness(defended, x, y, ["pgd"], eps=0.1)
    assert "E9" in codes(plain, "error") and not plain.trustworthy
    assert "E9" not in codes(adaptive)
    assert any("BPDA" in note for note in adaptive.threat_model["adaptive"])
    assert adaptive.robust_accuracy < plain.robust_accuracy - 0.3


def test_eot_applied_to_randomized_models(trained_model, data):
    _, _, x, y = data
    x, y = x[:64], y[:64]
    noisy = keras.Sequential([keras.Input(SHAPE), NoisyLogits(), trained_model])
    kwargs = dict(eps=0.1, checks="fast", num_draws=9)
    single = evaluate_robustness(noisy, x, y, [PGD(eps=0.1, num_steps=10, seed=0)],
                                 eot_samples=1, **kwargs)
    eot = evaluate_robustness(noisy, x, y, [PGD(eps=0.1, num_steps=10, seed=0)],
                              eot_samples=20, **kwargs)
    assert single.threat_model["randomized"] and single.threat_model["num_draws"] == 9
    assert "E7" in codes(single, "error")  # randomized, attacked with single samples
    assert "E7" not in codes(eot)  # declared, and attacked through EoT with 20 draws
    assert any("EoT over 20" in note for note in eot.threat_model["adaptive"])
    assert eot.robust_accuracy < single.robust_accuracy - 0.1


def test_undeclared_randomness_is_detected(trained_model, data):
    _, _, x, y = data
    hidden = NoisyLogits(scale=0.2)
    hidden.randomized = False
    model = keras.Sequential([keras.Input(SHAPE), hidden, trained_model])
    r = evaluate_robustness(model, x[:32], y[:32], [FGSM(eps=0.05)], eps=0.05, eot_samples=20)
    assert r.threat_model["randomized"] and r.threat_model["num_draws"] == 11
    assert any("EoT" in note for note in r.threat_model["adaptive"])
    assert ("E7", "warning") in {(f.code, f.severity) for f in r.flags}


# === Flags: each raised when it should be, and not when it should not ===


def test_healthy_model_raises_no_error_flag_in_full_mode(trained_model, data):
    _, _, x, y = data
    r = evaluate_robustness(trained_model, x[:64], y[:64],
                            [PGD(eps=0.1, num_steps=50, num_restarts=2, seed=0)], eps=0.1,
                            checks="full")
    assert not codes(r) & {"E6", "E7", "E9", "E10", "E11", "E12", "E13", "E14", "E17"}
    assert r.diagnostics["unbounded_accuracy"] == 0.0
    curve = r.diagnostics["security_curve"]["accuracy"]
    assert curve == sorted(curve, reverse=True)


def test_masked_toy_defense_is_caught(trained_model, data):
    # A quantiser that hides its non-differentiability: gradients vanish, the transfer from
    # the undefended model breaks it, an unbounded attack cannot. The flags must say so.
    _, _, x, y = data
    defended = quantized(trained_model, declared=False)
    transfer = Transfer(PGD(eps=0.1, num_steps=20, seed=1), source_model=trained_model)
    r = evaluate_robustness(defended, x[:64], y[:64], [PGD(eps=0.1, seed=0), transfer],
                            eps=0.1, checks="full")
    assert {"E9", "E10", "E13"} <= codes(r, "error")
    assert not r.trustworthy and "Untrustworthy" in r.to_markdown()


def test_e6_flags_probability_outputs(trained_model, data):
    _, _, x, y = data
    probabilities = keras.Sequential([trained_model, keras.layers.Lambda(keras.ops.softmax)])
    r = evaluate_robustness(probabilities, x[:16], y[:16], [FGSM(eps=0.05)], eps=0.05)
    assert ("E6", "warning") in {(f.code, f.severity) for f in r.flags}
    softmax_head = keras.Sequential([trained_model, keras.layers.Softmax()])
    r = evaluate_robustness(softmax_head, x[:16], y[:16], [FGSM(eps=0.05)], eps=0.05)
    assert ("E6", "info") in {(f.code, f.severity) for f in r.flags}
    assert "E6" not in codes(evaluate_robustness(trained_model, x[:16], y[:16], [FGSM(eps=0.05)],
                                                 eps=0.05))


def test_e12_flags_an_iterative_attack_weaker_than_one_step(trained_model, data):
    _, _, x, y = data
    crippled = PGD(eps=EPS, step_size=1e-4, num_steps=2, random_start=False)
    r = evaluate_robustness(trained_model, x[:64], y[:64], [crippled], eps=EPS)
    assert "E12" in codes(r, "error")
    healthy = evaluate_robustness(trained_model, x[:64], y[:64],
                                  [PGD(eps=EPS, num_steps=20, seed=0)], eps=EPS)
    assert "E12" not in codes(healthy)


class _OutOfBudget(Attack):
    """A buggy attack: steps 3·eps and skips the base class's projection."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.norm = EPS, "linf"

    def __call__(self, model, x, y, target=None):
        return np.clip(x + 3 * EPS * np.sign(0.5 - x), 0, 1).astype(x.dtype)


def test_e17_flags_and_discards_invalid_examples(trained_model, data):
    _, _, x, y = data
    r = evaluate_robustness(trained_model, x[:32], y[:32], [_OutOfBudget()], eps=EPS,
                            checks="fast")
    assert "E17" in codes(r, "error")
    assert r.attacks[0]["broken"] == 0 and r.attacks[0]["invalid"] > 0
    assert "E17" not in codes(evaluate_robustness(trained_model, x[:32], y[:32],
                                                  [FGSM(eps=EPS)], eps=EPS))


def test_check_functions_trigger_and_stay_quiet():
    assert C.check_unbounded(0.3, 10).code == "E10" and C.check_unbounded(0.0, 10) is None
    assert C.check_monotone([1, 2, 3], [0.9, 0.5, 0.7], 100).code == "E11"
    assert C.check_monotone([1, 2, 3], [0.9, 0.5, 0.504], 100) is None  # within 1 example
    assert C.check_weaker_attack("E14", 3, 1000, "noise").code == "E14"
    assert C.check_weaker_attack("E14", 2, 1000, "noise") is None  # ≤ 0.2 pt of n
    assert C.check_weaker_attack("E13", 1, 100, "Square").code == "E13"
    assert C.check_convergence(6, 1000).code == "E15" and C.check_convergence(5, 1000) is None
    health = {"zero_margin": 0.0, "zero_ce": 0.25, "non_finite": 0.0, "n": 8}
    assert C.check_gradients(health).severity == "warning"
    assert C.check_gradients({**health, "zero_ce": 0.0}) is None
    assert C.check_randomness(False, False, 1) is None
    assert C.check_validity({}, 10) is None


def test_presets_build_the_threat_model():
    attack = md.evaluation.make_attack("pgd", 0.1, "l2", seed=3)
    assert isinstance(attack, PGD) and attack.eps == 0.1 and attack.norm == "l2"
    assert attack.seed == 3
    assert md.evaluation.default_attacks("l1", 10) == ["pgd", "pgd-margin"]


def test_plots_draw_the_report(pgd_report):
    ax = md.visualization.plot_attack_bars(pgd_report)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 1 + len(pgd_report.attacks)
    assert heights[0] == pytest.approx(100 * pgd_report.clean_accuracy)
    assert heights[-1] == pytest.approx(100 * pgd_report.robust_accuracy)
    ax = md.visualization.plot_security_curve({"PGD": ([0.0, 0.1], [0.9, 0.2]),
                                               "FGSM": ([0.0, 0.1], [0.9, 0.4])})
    assert len(ax.lines) == 2 and list(ax.lines[1].get_ydata()) == [90.0, 40.0]
    with pytest.raises(ValueError, match="checks='full'"):
        md.visualization.plot_security_curve(pgd_report)


def test_default_cascade_is_autoattack_like(trained_model, data):
    _, _, x, y = data
    r = evaluate_robustness(trained_model, x[:32], y[:32], eps=0.1, checks="none")
    assert [a["name"] for a in r.attacks] == ["apgd-ce", "apgd-t", "square"]
    assert [a["kind"] for a in r.attacks] == ["gradient", "gradient", "gradient-free"]
    assert r.robust_accuracy <= 0.1  # the fixture model is not robust at eps = 0.1


def test_minimum_distance_attacks_join_a_fixed_budget_cascade(trained_model, data):
    _, _, x, y = data
    r = evaluate_robustness(trained_model, x[:16], y[:16], ["cw-l2"], eps=0.5, norm="l2",
                            checks="fast")
    assert r.attacks[0]["kind"] == "gradient" and r.attacks[0]["invalid"] == 0
    broken = r.broken_by == 0
    assert broken.any() and not r.robust[broken].any()
    assert np.all(lp(r.adversarial_examples - x[:16], "l2") <= 0.5 + 1e-5)
    with pytest.raises(ValueError, match="supports norms"):
        evaluate_robustness(trained_model, x[:4], y[:4], ["cw-l2"], eps=0.1, norm="linf")
