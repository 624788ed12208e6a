"""Does `evaluate_robustness` reach the same robust accuracy with less work?

Nobody beats the forward+backward floor with a faster loop (CleverHans' PGD is already at
≈1.0×), so the evaluation wins by not attacking points that need no attack: each attack of
the cascade runs only on the points every earlier attack failed on, points misclassified
clean are never attacked, and APGD stops a batch once all of it is broken. This benchmark
measures that on the demo CNN (`zoo.small_cnn()` trained on Fashion-MNIST, as `make demo`
does; cached in `bench/.cache/`), on the first `--n` test images:

1. **Cascade vs every attack on every point**, for the same attacks and seeds: the baseline
   runs each attack on all n points and takes the per-example worst case (what a loop over
   attacks in a peer library does); the cascade is `evaluate_robustness(..., checks="none")`.
   Both robust accuracies are printed; the speedup counts only if they agree within 0.5 pt.
   Also timed: the cascade with the default `checks="fast"` (baselines and gradient check).
   At two budgets: eps = 0.1 (the demo's, little survives) and a small eps where about half
   the points survive (the cascade's least favourable case).
2. **APGD-CE vs PGD at equal steps** (100): robust accuracy and time on the same points.

Times are wall clock, each the median of `--repeats` runs after a warm-up call; compare the
ratios within one run only (the machine is shared).

Usage:
    .venv/bin/python bench/evaluation_speed.py            # ~20 min; updates BENCHMARKS.md
    .venv/bin/python bench/evaluation_speed.py --quick    # smoke test (n=64), no write
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import manidefense as md  # noqa: E402
import manidefense.cli  # noqa: E402, F401 - run_demo trains the model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import load_average, machine_info, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "demo"


def trained_model():
    """The demo's CNN, trained by `manidefense.cli.run_demo` (as `make demo`) and cached."""
    if not (CACHE / "model.keras").exists():
        md.cli.run_demo(out=CACHE, verbose=False, rbf=False)
    return keras.saving.load_model(CACHE / "model.keras")


def predict(model, x):
    return np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)


def every_point(model, x, y, names, eps, seed):
    """Each attack on all points; worst case per example."""
    robust = predict(model, x) == y
    for i, name in enumerate(names):
        attack = md.evaluation.make_attack(name, eps, "linf", seed=seed + i)
        robust &= predict(model, np.asarray(attack(model, x, y))) == y
    return float(robust.mean())


def cascade(model, x, y, names, eps, seed, checks="none"):
    report = md.evaluation.evaluate_robustness(model, x, y, names, eps=eps, norm="linf",
                                               checks=checks, seed=seed)
    return report.robust_accuracy


def timed(fn, repeats):
    """Median wall time of `fn(n)` over `repeats` runs on all points, after a warm-up on 16
    points (graphs have a batch dimension of None, so the warm-up traces them all)."""
    fn(16)
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(None)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def run(args):
    model = trained_model()
    x, y = md.datasets.load("fashion_mnist", "test", limit=args.n)
    clean = float(np.mean(predict(model, x) == y))
    names = [n for n in args.attacks.split(",") if n]
    rows = []
    for eps in args.eps:
        full_t, full_acc = timed(lambda k, e=eps: every_point(model, x[:k], y[:k], names, e, 0),
                                 args.repeats)
        cas_t, cas_acc = timed(lambda k, e=eps: cascade(model, x[:k], y[:k], names, e, 0),
                               args.repeats)
        fast_t, fast_acc = timed(
            lambda k, e=eps: cascade(model, x[:k], y[:k], names, e, 0, "fast"), args.repeats)
        rows.append({"eps": eps, "full": (full_t, full_acc), "cascade": (cas_t, cas_acc),
                     "fast": (fast_t, fast_acc)})
    apgd = md.attacks.APGD(eps=args.eps[-1], num_steps=100, seed=0)
    pgd = md.attacks.PGD(eps=args.eps[-1], num_steps=100, seed=0)
    versus = {}
    for label, attack in (("PGD-100", pgd), ("APGD-CE-100", apgd)):
        t, acc = timed(lambda k, a=attack: float(np.mean(
            predict(model, np.asarray(a(model, x[:k], y[:k]))) == y[:k])), args.repeats)
        versus[label] = (t, acc)
    return {"clean": clean, "names": names, "rows": rows, "versus": versus}


def section(args, result, started):
    today = datetime.date.today().isoformat()
    lines = [
        "## evaluation_speed", "",
        f"Measured {today} by `bench/evaluation_speed.py` (n={args.n}, "
        f"{args.repeats} timed run(s) per cell after a warm-up on 16 points, median wall "
        f"clock). Model: the "
        f"demo CNN (`zoo.small_cnn()`, 12,000 Fashion-MNIST images, 3 epochs), clean accuracy "
        f"{result['clean']:.1%} on Fashion-MNIST test[:{args.n}].", "",
        f"- Machine: {machine_info()}; load average at the end {load_average()}.",
        f"- Attacks: {', '.join(result['names'])} (presets of `manidefense.evaluation`), L∞.",
        f"- Total time of the run: {(time.time() - started) / 60:.1f} min.", "",
        "| eps | every attack on every point: s (robust) | cascade, checks=none: s (robust) "
        "| × faster | Δ robust (pt) | cascade, checks=fast: s (robust) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        (ft, fa), (ct, ca), (qt, qa) = row["full"], row["cascade"], row["fast"]
        lines.append(f"| {row['eps']:g} | {ft:.1f} ({fa:.1%}) | {ct:.1f} ({ca:.1%}) | "
                     f"{ft / ct:.2f} | {100 * (ca - fa):+.1f} | {qt:.1f} ({qa:.1%}) |")
    lines += ["", f"| attack (eps {args.eps[-1]:g}) | s | robust accuracy |",
              "|---|---:|---:|"]
    for label, (t, acc) in result["versus"].items():
        lines.append(f"| {label} | {t:.1f} | {acc:.1%} |")
    best = max(r["full"][0] / r["cascade"][0] for r in result["rows"])
    worst = min(r["full"][0] / r["cascade"][0] for r in result["rows"])
    agree = all(abs(r["cascade"][1] - r["full"][1]) <= 0.005 for r in result["rows"])
    lines += ["", f"The cascade is {worst:.2f}–{best:.2f}× faster than running every attack "
              f"on every point, with robust accuracies that "
              f"{'agree within 0.5 pt' if agree else 'do NOT all agree within 0.5 pt'} "
              "(differences come from the attacks' random starts on different batches). "
              "APGD stops a batch once every example in it is broken, so at equal steps its "
              "time depends on how many points survive."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=64, one repeat, no write")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.1])
    parser.add_argument("--attacks", default="apgd-ce,apgd-t,square",
                        help="comma-separated presets (missing classes are skipped)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.no_write = 64, 1, True
    available = []
    for name in args.attacks.split(","):
        try:
            md.evaluation.make_attack(name, 0.1, "linf")
            available.append(name)
        except ValueError as err:
            print(f"skipping {name}: {err}")
    args.attacks = ",".join(available)
    return args


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    result = run(args)
    text = section(args, result, started)
    print(text)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", text, "evaluation_speed")
    print(f"platform: {platform.platform()}")


if __name__ == "__main__":
    main()
