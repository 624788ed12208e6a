"""The command line: the demo end to end on tiny synthetic data, and the console script."""

import json
import os
import subprocess
import sys

import numpy as np

import manidefense
from manidefense import cli


def test_demo_runs_and_writes_its_outputs(tmp_path, capsys):
    code = cli.main(["demo", "--dataset", "synthetic", "--train-size", "600",
                     "--test-size", "48", "--epochs", "2", "--out", str(tmp_path),
                     "--em-steps", "30", "--rbf-test-size", "16"])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("clean", "FGSM", "PGD-Linf", "PGD-L2", "PGD-L1", "RBF clean", "RBF PGD-Linf",
                 "BPDA + EoT"):
        assert name in out
    assert (tmp_path / "adversarial_examples.png").stat().st_size > 10_000
    assert (tmp_path / "model.keras").exists() and (tmp_path / "rbf_defense.keras").exists()
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["attack"]: row for row in results["rows"]}
    assert rows["clean"]["accuracy"] > 0.5
    # The attacks must hurt the model and stay within their budgets.
    assert rows["PGD-Linf"]["accuracy"] < rows["clean"]["accuracy"]
    assert rows["PGD-L2"]["mean_distance"] <= 1.5 + 1e-6
    assert results["rbf"]["filters"] >= 1 and rows["RBF PGD-Linf"]["test_size"] == 16
    assert rows["RBF PGD-Linf"]["mean_distance"] <= 0.1 + 1e-6


def test_demo_reports_missing_data_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MANIDEFENSE_OFFLINE", "1")
    monkeypatch.setenv("MANIDEFENSE_DATA", str(tmp_path))
    code = cli.main(["demo", "--dataset", "cifar10", "--out", str(tmp_path)])
    assert code == 2
    assert "MANIDEFENSE_DATA" in capsys.readouterr().err


def test_console_script_version():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "manidefense.cli", "--version"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and manidefense.__version__ in result.stdout


def test_evaluate_loads_a_saved_model_and_writes_a_report(tmp_path, capsys):
    import keras

    import manidefense as md

    keras.utils.set_random_seed(0)
    x, y = md.datasets.load("synthetic", "train", limit=600)
    model = md.zoo.small_cnn(width=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    out, markdown = tmp_path / "report.json", tmp_path / "report.md"
    code = cli.main(["evaluate", "--model", str(path), "--dataset", "synthetic", "--eps", "0.05",
                     "--attacks", "fgsm,pgd", "--n", "40", "--out", str(out),
                     "--markdown", str(markdown), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    report = md.evaluation.RobustnessReport.from_json(str(out))
    assert report.num_examples == 40 and report.robust_accuracy <= report.clean_accuracy
    assert [a["name"] for a in report.attacks][:2] == ["fgsm", "pgd"]
    assert "robust (worst case)" in printed and markdown.read_text() in printed
    assert report.meta["dataset"] == "synthetic/test[:40]"
    # Under a (here one-device) MirroredStrategy, loaded in its scope: the same per example.
    mirrored = tmp_path / "mirrored.json"
    assert cli.main(["evaluate", "--model", str(path), "--dataset", "synthetic", "--eps", "0.05",
                     "--attacks", "fgsm,pgd", "--n", "40", "--out", str(mirrored),
                     "--strategy", "mirrored", "--quiet"]) == 0
    again = md.evaluation.RobustnessReport.from_json(str(mirrored))
    np.testing.assert_array_equal(again.broken_by, report.broken_by)
    assert again.meta["replicas"] == 1


def test_evaluate_reports_bad_arguments(tmp_path, capsys):
    code = cli.main(["evaluate", "--model", str(tmp_path / "missing.keras"), "--eps", "0.1"])
    assert code == 2 and "`--model`" in capsys.readouterr().err


PLUGIN = '''
import keras


@keras.saving.register_keras_serializable(package="mdtestplugin")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
'''


def test_evaluate_imports_custom_layers_and_saves_state_per_chunk(tmp_path, capsys, monkeypatch):
    import importlib

    import keras

    import manidefense as md

    (tmp_path / "mdtestplugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = importlib.import_module("mdtestplugin")
    model = keras.Sequential([keras.Input((28, 28, 1)), plugin.Doubler(), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    path = tmp_path / "model.keras"
    model.save(path)
    # Forget the registration, as a fresh process would not have it.
    keras.saving.get_custom_objects().pop("mdtestplugin>Doubler")
    sys.modules.pop("mdtestplugin")
    state, out = tmp_path / "state.npz", tmp_path / "report.json"
    args = ["evaluate", "--model", str(path), "--dataset", "synthetic", "--eps", "0.05",
            "--attacks", "fgsm", "--n", "12", "--chunk-size", "5", "--state", str(state),
            "--out", str(out), "--quiet"]
    assert cli.main(args + ["--import", "mdtestplugin"]) == 0
    assert "mdtestplugin>Doubler" in keras.saving.get_custom_objects()
    report = md.evaluation.RobustnessReport.from_json(str(out))
    assert report.num_examples == 12 and state.exists()
    with md.evaluation.robustness.np.load(state) as saved:
        assert int(saved["done"]) == 12
    # The chunk size is part of the state's identity: resuming with another one is refused.
    capsys.readouterr()
    resumed = [a if a != "5" else "6" for a in args]
    assert cli.main(resumed + ["--import", "mdtestplugin"]) == 2
    assert "`state_path`" in capsys.readouterr().err
    assert cli.main(args + ["--import", "no_such_module_xyz"]) == 2
    assert "`--import`" in capsys.readouterr().err


def test_certify_matches_the_library_and_reads_a_saved_smoothed_classifier(tmp_path, capsys):
    import keras
    import numpy as np

    import manidefense as md
    from manidefense.certification import SmoothedClassifier, certified_accuracy

    keras.utils.set_random_seed(0)
    x, y = md.datasets.load("synthetic", "train", limit=600)
    model = md.zoo.small_cnn(width=8)
    smoothed = SmoothedClassifier(model, 10, sigma=0.25, seed=0)
    smoothed.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    smoothed.fit(x, y, epochs=2, batch_size=64, verbose=0)  # Gaussian augmentation
    base_path, smoothed_path = tmp_path / "base.keras", tmp_path / "smoothed.keras"
    model.save(base_path)
    smoothed.save(smoothed_path)
    out = tmp_path / "cert.json"
    args = ["--dataset", "synthetic", "--n", "12", "--num-samples", "200", "--radii", "0.1,2",
            "--seed", "3", "--out", str(out), "--quiet"]
    assert cli.main(["certify", "--model", str(base_path), "--sigma", "0.25", *args]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    xt, yt = md.datasets.load("synthetic", "test", limit=12)
    expected = SmoothedClassifier(model, 10, 0.25, seed=3).certify(xt, 100, 200)
    np.testing.assert_array_equal(summary["classes"], expected[0])
    np.testing.assert_allclose(summary["radii"], expected[1])
    table = {row["radius"]: row for row in summary["table"]}
    assert table[0.1]["certified_accuracy"] == certified_accuracy(*expected[::-1], yt, 0.1)
    # 2.0 is beyond what n = 200 can certify at sigma 0.25: marked, never shown as 0%.
    assert table[2.0]["above_max_radius"] and "above the largest certifiable radius" in printed
    assert "Average certified radius" in printed
    # A saved SmoothedClassifier brings its own sigma.
    assert cli.main(["certify", "--model", str(smoothed_path), *args]) == 0
    assert json.loads(out.read_text())["classes"] == summary["classes"]


def test_certify_reports_bad_arguments(tmp_path, capsys):
    import manidefense as md

    path = tmp_path / "base.keras"
    md.zoo.small_cnn(width=4).save(path)
    assert cli.main(["certify", "--model", str(path), "--dataset", "synthetic"]) == 2
    assert "`--sigma`" in capsys.readouterr().err
    assert cli.main(["certify", "--model", str(path), "--dataset", "synthetic", "--sigma",
                     "-1"]) == 2
    assert "`sigma`" in capsys.readouterr().err
