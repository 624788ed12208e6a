"""The command line: the demo end to end on tiny synthetic data, and the console script."""

import json
import os
import subprocess
import sys

import manidefense
from manidefense import cli


def test_demo_runs_and_writes_its_outputs(tmp_path, capsys):
    code = cli.main(["demo", "--dataset", "synthetic", "--train-size", "600",
                     "--test-size", "48", "--epochs", "2", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("clean", "FGSM", "PGD-Linf", "PGD-L2", "PGD-L1"):
        assert name in out
    assert (tmp_path / "adversarial_examples.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["attack"]: row for row in results["rows"]}
    assert rows["clean"]["accuracy"] > 0.5
    # The attacks must hurt the model and stay within their budgets.
    assert rows["PGD-Linf"]["accuracy"] < rows["clean"]["accuracy"]
    assert rows["PGD-L2"]["mean_distance"] <= 1.5 + 1e-6


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
