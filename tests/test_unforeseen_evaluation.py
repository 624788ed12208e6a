"""Unforeseen threat models in the evaluation: separate from the Lp worst case, by name, UAR."""

import keras
import numpy as np
import pytest

import manidefense as md
from manidefense import cli
from manidefense.evaluation import presets, uar


@pytest.fixture(scope="module")
def fashion_like():
    """A small CNN on 28×28×1 synthetic data, its test split and the saved model's path."""
    keras.utils.set_random_seed(0)
    x, y = md.datasets.load("synthetic", "train", limit=800)
    xt, yt = md.datasets.load("synthetic", "test", limit=64)
    model = md.zoo.small_cnn(width=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt) > 0.6
    return model, xt, yt


def test_only_unforeseen_attacks_report_no_lp_number(fashion_like):
    model, x, y = fashion_like
    fog = md.attacks.Fog(eps=4.0, num_steps=5, seed=0)
    report = md.evaluation.evaluate_robustness(model, x, y, [("strong fog", fog), "jpeg-linf"],
                                               checks="none")
    assert not report.lp_evaluated and report.robust_accuracy is None
    names = [u["name"] for u in report.unforeseen]
    assert names == ["strong fog", "jpeg-linf"]
    strong = report.unforeseen[0]
    assert strong["threat_model"] == "fog" and strong["eps"] == 4.0
    # Accuracy equals a separate run of the same attack on the clean-correct points.
    clean = np.argmax(model.predict(x, verbose=0), -1) == y
    fresh = md.attacks.Fog(eps=4.0, num_steps=5, seed=0)
    x_adv = fresh(model, x[clean], y[clean])
    expected = np.sum(np.argmax(model.predict(x_adv, verbose=0), -1) == y[clean]) / len(x)
    assert strong["accuracy"] == pytest.approx(expected)
    assert strong["accuracy"] < report.clean_accuracy - 0.2  # eps 4 fog is strong
    text = report.to_markdown()
    assert "no Lp attack was run" in text and "robust (worst case)" not in text
    assert "Unforeseen threat models" in text and "strong fog" in text
    again = md.evaluation.RobustnessReport.from_json(report.to_json())
    assert again.unforeseen == report.unforeseen and again.robust_accuracy is None
    with pytest.raises(ValueError, match="no Lp evaluation"):
        md.visualization.plot_attack_bars(report)


def test_unforeseen_results_never_change_the_lp_worst_case(fashion_like):
    model, x, y = fashion_like
    lp_only = md.evaluation.evaluate_robustness(model, x, y, ["pgd"], eps=0.05, checks="none")
    mixed = md.evaluation.evaluate_robustness(model, x, y, ["pgd", "fog"], eps=0.05,
                                              checks="none")
    np.testing.assert_array_equal(lp_only.robust, mixed.robust)
    assert [a["name"] for a in mixed.attacks] == ["pgd"]
    assert [u["threat_model"] for u in mixed.unforeseen] == ["fog"]
    assert "fog" in repr(mixed)


def test_presets_build_each_unforeseen_attack_and_are_not_mutated():
    for name in presets.UNFORESEEN:
        attack = presets.make_unforeseen(name, (28, 28, 1), eps=0.5 if name != "spatial" else None)
        assert presets.is_unforeseen(attack) and presets.is_unforeseen(name)
        if name != "spatial":
            assert attack.eps == 0.5
    # eps given once must not leak into the next default build.
    default = presets.make_unforeseen("fog", (99, 99, 1))
    assert default.eps == md.attacks.Fog().eps
    assert not presets.is_unforeseen("pgd") and not presets.is_unforeseen(md.attacks.PGD())
    with pytest.raises(ValueError, match="unforeseen presets"):
        presets.make_unforeseen("rain", (28, 28, 1))


def test_medium_eps_comes_from_the_shipped_calibration():
    table = uar.load_calibration((32, 32, 3))
    assert presets.medium_eps("elastic", (32, 32, 3)) == table["elastic"]["eps"][3]
    assert presets.make_unforeseen("elastic", (32, 32, 3)).eps == table["elastic"]["eps"][3]
    assert presets.medium_eps("elastic", (5, 5, 2)) is None


def test_evaluate_uar_runs_the_targeted_protocol(fashion_like):
    model, x, y = fashion_like
    table = {"fog": {"eps": [0.01, 0.1, 0.5, 1, 2, 4], "ata": [0.9] * 6},
             "pgd-linf": {"eps": [1e-7, 0.01, 0.02, 0.05, 0.1, 0.2], "ata": None}}
    results = uar.evaluate_uar(model, x, y, calibration=table, num_steps=5, seed=0)
    assert set(results) == {"fog", "pgd-linf"}
    fog = results["fog"]["accuracy"]
    assert fog[0] > fog[-1] + 0.2  # weak vs strong fog
    assert results["fog"]["uar"] == pytest.approx(sum(fog) / (0.9 * 6))
    assert results["pgd-linf"]["uar"] is None
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    assert results["pgd-linf"]["accuracy"][0] == pytest.approx(clean)  # eps ~0
    assert "n/a (no ATA)" in uar.uar_table(results)
    with pytest.raises(ValueError, match="without a calibration"):
        uar.evaluate_uar(model, x, y, ["snow"], calibration=table)


def test_random_targets_are_wrong_and_reproducible():
    y = np.arange(1000) % 10
    t = uar.random_targets(y, 10, seed=3)
    assert np.all(t != y) and np.all((t >= 0) & (t < 10))
    np.testing.assert_array_equal(t, uar.random_targets(y, 10, seed=3))
    assert len(np.unique(t[y == 0])) == 9  # every wrong class is drawn


def test_uar_attack_uses_frank_wolfe_for_l1_and_rejects_unknown_names():
    assert uar.uar_attack("pgd-l1", 8.0).method == "frank_wolfe"
    assert uar.uar_attack("jpeg-l2", 1.0, num_steps=7).num_steps == 7
    with pytest.raises(ValueError, match="UAR attacks"):
        uar.uar_attack("spatial", 1.0)


def test_cli_evaluates_unforeseen_attacks_without_an_lp_budget(fashion_like, tmp_path, capsys):
    model, _, _ = fashion_like
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "report.json"
    code = cli.main(["evaluate", "--model", str(path), "--dataset", "synthetic",
                     "--attacks", "fog,spatial", "--n", "24", "--out", str(out), "--quiet",
                     "--checks", "none"])
    assert code == 0
    printed = capsys.readouterr().out
    report = md.evaluation.RobustnessReport.from_json(str(out))
    assert [u["threat_model"] for u in report.unforeseen] == ["fog", "spatial"]
    assert "Unforeseen threat models" in printed
