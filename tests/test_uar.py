"""UAR scoring, AU's eps calibration and the calibration table (no attack is run)."""

import importlib.resources
import itertools
import json

import numpy as np
import pytest

from manidefense.evaluation.uar import (
    NUM_EPS,
    calibrate_eps,
    load_calibration,
    save_calibration,
    uar,
    uar_table,
)

ACC = [0.8, 0.7, 0.6, 0.5, 0.3, 0.1]
ATA = [0.9, 0.85, 0.8, 0.7, 0.5, 0.2]
ENTRY = {"eps": [0.125, 0.25, 0.5, 1.0, 2.0, 8.0], "ata": [0.87, 0.81, 0.72, 0.58, 0.45, 0.28],
         "units": "pixels", "provenance": "test"}


# === uar ===

def test_uar_is_the_ratio_of_sums():
    # 3.0 / 3.95, computed by hand
    assert uar(ACC, ATA) == pytest.approx(3.0 / 3.95, rel=1e-12)
    assert isinstance(uar(ACC, ATA), float)


def test_uar_exceeds_one_when_the_model_beats_the_ata():
    assert uar([0.5] * 6, [0.25] * 6) == pytest.approx(2.0)


@pytest.mark.parametrize(("accuracies", "ata", "match"), [
    (ACC[:5], ATA, "exactly 6 values"),
    (ACC, ATA + [0.1], "exactly 6 values"),
    ([80, 70, 60, 50, 30, 10], ATA, "fractions in \\[0, 1\\]"),
    (ACC, [0.9, 0.85, 0.8, 0.7, 0.5, -0.1], "fractions in \\[0, 1\\]"),
    ([0.8, float("nan"), 0.6, 0.5, 0.3, 0.1], ATA, "finite"),
    (ACC, [0.0] * 6, "positive sum"),
])
def test_uar_rejects_bad_inputs(accuracies, ata, match):
    with pytest.raises(ValueError, match=match):
        uar(accuracies, ata)


def test_uar_error_names_the_argument():
    with pytest.raises(ValueError, match="`ata`"):
        uar(ACC, ATA[:3])


# === calibrate_eps ===

def brute_force(eps, ata, reference):
    """Minimum total cost and chosen candidate set over every injective assignment."""
    best = min(itertools.permutations(range(len(eps)), len(reference)),
               key=lambda rows: sum(abs(ata[i] - r) for i, r in zip(rows, reference, strict=True)))
    return sum(abs(ata[i] - r) for i, r in zip(best, reference, strict=True)), set(best)


@pytest.mark.parametrize("seed", range(12))
def test_calibrate_eps_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 7 + seed % 3  # more candidates than slots, so the choice of the set matters
    eps = rng.permutation(np.round(rng.uniform(0.01, 10.0, n), 4))
    ata = rng.uniform(0.0, 1.0, n)
    # a narrow reference band makes candidates compete (a greedy choice fails 5 of 12 seeds)
    reference = np.sort(rng.uniform(0.3, 0.7, NUM_EPS))[::-1]
    chosen_eps, chosen_ata = calibrate_eps(eps, ata, reference)
    cost, rows = brute_force(eps, ata, reference)
    assert chosen_eps == sorted(chosen_eps) and len(chosen_eps) == NUM_EPS
    assert set(chosen_eps) == {float(eps[i]) for i in rows}
    assert chosen_ata == [float(ata[list(eps).index(e)]) for e in chosen_eps]
    # the optimal cost of matching the chosen candidates (checked on their 6! orders)
    assert min(sum(abs(a - r) for a, r in zip(order, reference, strict=True))
               for order in itertools.permutations(chosen_ata)) == pytest.approx(cost)


def test_calibrate_eps_picks_the_candidates_closest_to_the_reference():
    eps = [0.5, 1, 2, 4, 8, 16, 32, 64]
    ata = [0.95, 0.90, 0.88, 0.81, 0.70, 0.47, 0.22, 0.05]
    reference = [0.91, 0.88, 0.82, 0.71, 0.47, 0.23]
    assert calibrate_eps(eps, ata, reference) == (
        [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], [0.90, 0.88, 0.81, 0.70, 0.47, 0.22])


def test_calibrate_eps_sorts_by_eps_even_when_ata_is_not_monotone():
    eps, ata = calibrate_eps([8, 1, 4, 2, 16, 32], [0.3, 0.9, 0.8, 0.5, 0.6, 0.1], ATA)
    assert eps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert ata == [0.9, 0.5, 0.8, 0.3, 0.6, 0.1]


@pytest.mark.parametrize(("eps", "ata", "reference", "match"), [
    ([1, 2, 3, 4, 5], [0.5] * 5, ATA, "at least 6 candidates"),
    ([1, 2, 3, 4, 5, 6, 7], [0.5] * 6, ATA, "one per candidate eps"),
    ([1, 2, 3, 4, 5, 0], [0.5] * 6, ATA, "eps > 0"),
    ([1, 2, 3, 4, 5, 6], [50] * 6, ATA, "not percents"),
    ([1, 2, 3, 4, 5, 6], [0.5] * 6, ATA[:4], "reference_ata"),
])
def test_calibrate_eps_rejects_bad_inputs(eps, ata, reference, match):
    with pytest.raises(ValueError, match=match):
        calibrate_eps(eps, ata, reference)


# === calibration table ===

def test_shipped_cifar_calibration_matches_au():
    table = load_calibration((32, 32, 3))
    assert set(table) == {"pgd-linf", "pgd-l2", "pgd-l1", "jpeg-linf", "jpeg-l1", "elastic"}
    np.testing.assert_allclose(np.array(table["pgd-linf"]["eps"]) * 255, [1, 2, 4, 8, 16, 32])
    np.testing.assert_allclose(np.array(table["pgd-l2"]["eps"]) * 255,
                               [40, 80, 160, 320, 640, 2560])
    # AU's per-element L1 eps times the 3072 elements of a CIFAR image, on the [0, 1] scale
    np.testing.assert_allclose(np.array(table["pgd-l1"]["eps"]) * 255 / 3072,
                               [0.0634766, 0.1269531, 0.2539063, 0.5078125, 2.03125, 8.125])
    assert table["elastic"]["eps"] == [0.125, 0.25, 0.5, 1.0, 2.0, 8.0]
    # §8 of the research note, in percent with one decimal
    np.testing.assert_allclose(np.array(table["pgd-linf"]["ata"]) * 100,
                               [91.0, 87.8, 81.6, 71.3, 46.5, 23.1], atol=0.051)
    np.testing.assert_allclose(np.array(table["jpeg-l1"]["ata"]) * 100,
                               [91.4, 88.1, 80.2, 68.9, 56.3, 37.7], atol=0.051)
    for entry in table.values():
        assert "AU CIFAR-10" in entry["provenance"] and entry["units"]


def test_shipped_fashion_mnist_calibration_loads_and_is_a_copy():
    assert isinstance(load_calibration((28, 28, 1)), dict)
    table = load_calibration([32, 32, 3])
    table["elastic"]["eps"][0] = 99.0
    assert load_calibration((32, 32, 3))["elastic"]["eps"][0] == 0.125


def test_shipped_file_explains_itself():
    resource = importlib.resources.files("manidefense.evaluation") / "data"
    about = json.loads((resource / "uar_calibration.json").read_text("utf-8"))["_about"]
    assert "fractions" in about and "provisional" in about


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"28x28x1.*32x32x3"):
        load_calibration((64, 64, 3))


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 0), (32.0, 32, 3), "32x32x3"])
def test_bad_image_shape_raises(shape):
    with pytest.raises(ValueError, match="image_shape"):
        load_calibration(shape)


def test_save_load_round_trip(tmp_path):
    provisional = {**ENTRY, "ata": None, "eps": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}
    table = {"28x28x1": {"elastic": ENTRY, "fog": provisional}, "32x32x3": {}}
    path = tmp_path / "calibration.json"
    save_calibration(table, path)
    assert load_calibration((28, 28, 1), path) == {"elastic": ENTRY, "fog": provisional}
    assert load_calibration((32, 32, 3), path) == {}
    saved = json.loads(path.read_text())
    assert "fractions" in saved["_about"]  # the standard text is written when missing
    assert saved["28x28x1"]["fog"]["ata"] is None


def test_all_null_ata_list_reads_as_provisional(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"28x28x1": {"fog": {**ENTRY, "ata": [None] * 6}}}))
    assert load_calibration((28, 28, 1), path)["fog"]["ata"] is None


@pytest.mark.parametrize(("change", "match"), [
    ({"eps": [0.125, 0.25, 0.5, 1.0, 2.0]}, "`eps` must be 6"),
    ({"eps": [0.125, 0.5, 0.25, 1.0, 2.0, 8.0]}, "strictly ascending"),
    ({"eps": [0.0, 0.25, 0.5, 1.0, 2.0, 8.0]}, "positive"),
    ({"ata": [87, 81, 72, 58, 45, 28]}, "not percents"),
    ({"ata": [0.87, None, 0.72, 0.58, 0.45, 0.28]}, "`ata` must be null"),
    ({"units": ""}, "`units`"),
    ({"extra": 1}, "expected the keys"),
])
def test_corrupted_file_fails_schema_validation(tmp_path, change, match):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"_about": "x", "28x28x1": {"elastic": {**ENTRY, **change}}}))
    with pytest.raises(ValueError, match=match) as info:
        load_calibration((28, 28, 1), path)
    assert "28x28x1/elastic" in str(info.value)


@pytest.mark.parametrize("text", ['["not", "an", "object"]', '{"28x28": {}}',
                                  '{"_about": 3, "28x28x1": {}}'])
def test_corrupted_top_level_fails(tmp_path, text):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="Invalid UAR calibration"):
        load_calibration((28, 28, 1), path)


def test_save_refuses_a_bad_table_and_writes_nothing(tmp_path):
    path = tmp_path / "calibration.json"
    with pytest.raises(ValueError, match="strictly ascending"):
        save_calibration({"28x28x1": {"elastic": {**ENTRY, "eps": [1, 1, 2, 3, 4, 5]}}}, path)
    assert not path.exists()


def test_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="Cannot read"):
        load_calibration((28, 28, 1), tmp_path / "missing.json")


# === uar_table ===

def test_uar_table_holds_accuracies_and_uar():
    text = uar_table({
        "elastic": {"eps": ENTRY["eps"], "accuracy": ACC, "ata": ATA},
        "fog": {"eps": [1, 2, 4, 8, 16, 32], "accuracy": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]},
    })
    lines = text.strip().splitlines()
    assert lines[0].startswith("| attack |") and lines[0].endswith("| UAR |")
    assert len(lines) == 4 and lines[1].count("|---") == NUM_EPS + 2
    assert lines[2].startswith("| elastic |")
    for value in ("80.0% @ 0.125", "10.0% @ 8", f"{3.0 / 3.95:.1%}"):
        assert value in lines[2]
    assert "90.0% @ 1" in lines[3] and "n/a (no ATA)" in lines[3]


@pytest.mark.parametrize(("results", "match"), [
    ({}, "non-empty"),
    ({"fog": {"accuracy": ACC}}, "'eps'"),
    ({"fog": {"eps": [1, 2, 3], "accuracy": ACC}}, "6 eps"),
    ({"fog": {"eps": [1, 2, 3, 4, 5, 6], "accuracy": [80] * 6}}, "not percents"),
])
def test_uar_table_rejects_bad_results(results, match):
    with pytest.raises(ValueError, match=match):
        uar_table(results)
