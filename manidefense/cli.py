"""The `manidefense` command line: `manidefense demo`, `evaluate` and `certify`.

The CLI is the only part of the package that prints; it calls the public API only.
"""

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from manidefense.evaluation.report import RobustnessReport

#: The demo's attacks: (name, class name, keyword arguments), the issue's reference settings.
DEMO_ATTACKS = (
    ("FGSM", "FGSM", {"eps": 0.1, "norm": "linf"}),
    ("PGD-Linf", "PGD", {"eps": 0.1, "norm": "linf", "step_size": 0.01, "num_steps": 20}),
    ("PGD-L2", "PGD", {"eps": 1.5, "norm": "l2", "num_steps": 20}),
    ("PGD-L1", "PGD", {"eps": 10.0, "norm": "l1", "num_steps": 20}),
)


def _parser():
    import manidefense

    parser = argparse.ArgumentParser(
        prog="manidefense", description="Manifold-based adversarial defenses for Keras 3."
    )
    parser.add_argument("--version", action="version", version=manidefense.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="train a small CNN and attack it with FGSM and PGD (Linf, L2, L1), then "
                     "wrap a CNN trained on reconstructions in the RBF-CNN defense and attack "
                     "that adaptively (BPDA+EoT)"
    )
    demo.add_argument("--dataset", default="fashion_mnist",
                      help="fashion_mnist (default), mnist, cifar10 or synthetic")
    demo.add_argument("--train-size", type=int, default=12000)
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--test-size", type=int, default=1000)
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="manidefense-demo", help="output folder")
    demo.add_argument("--no-rbf", dest="rbf", action="store_false",
                      help="skip the RBF-CNN defense rows")
    demo.add_argument("--rbf-test-size", type=int, default=200,
                      help="test images for the adaptive attacks on the RBF defense (each "
                           "gradient averages 20 noise draws)")
    demo.add_argument("--em-steps", type=int, default=500,
                      help="M-steps of the RBF layer's EM (the authors': 500)")
    ev = sub.add_parser(
        "evaluate", help="attack a saved .keras model with a cascade and print an honest report"
    )
    ev.add_argument("--model", required=True, help="path of a .keras model (loaded safely)")
    ev.add_argument("--dataset", default="fashion_mnist")
    ev.add_argument("--split", default="test")
    ev.add_argument("--norm", default="linf", help="linf, l2 or l1")
    ev.add_argument("--eps", type=float, default=None,
                    help="the Lp budget (needed unless every attack is an unforeseen one)")
    ev.add_argument("--attacks", default=None,
                    help="comma-separated presets, e.g. apgd-ce,apgd-t,square (default: "
                         "the AutoAttack-style cascade for the norm); unforeseen threat models "
                         "(fog, snow, gabor, elastic, jpeg-linf, jpeg-l2, jpeg-l1, stadv, "
                         "spatial) run at their calibrated medium strength and are reported "
                         "each on its own")
    ev.add_argument("--n", type=int, default=1000, help="number of test examples")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--checks", default="fast", help="none, fast or full")
    ev.add_argument("--eot-samples", type=int, default=20)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="report.json", help="JSON report path")
    ev.add_argument("--markdown", default=None, help="also write the Markdown report here")
    ev.add_argument("--state", default=None, help=".npz state file to resume from")
    ev.add_argument("--chunk-size", type=int, default=1000,
                    help="examples per chunk; the --state file is saved after every chunk")
    ev.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import this module first, so the custom layers it registers with "
                         "keras.saving.register_keras_serializable load (repeatable)")
    ev.add_argument("--strategy", default="none", choices=("none", "mirrored", "multiworker"),
                    help="run the attacks' batches on a tf.distribute strategy: this machine's "
                         "devices (mirrored) or several machines (multiworker: set TF_CONFIG on "
                         "each and start the same command on every machine)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    cert = sub.add_parser(
        "certify", help="certify a saved .keras model by randomized smoothing (Cohen et al.): "
                        "certified accuracy at L2 radii and the average certified radius"
    )
    cert.add_argument("--model", required=True,
                      help="a .keras classifier (the base: noise goes before all its layers) or "
                           "a saved SmoothedClassifier")
    cert.add_argument("--dataset", default="fashion_mnist")
    cert.add_argument("--split", default="test")
    cert.add_argument("--sigma", type=float, default=None,
                      help="noise standard deviation (default: a SmoothedClassifier's own)")
    cert.add_argument("--n", type=int, default=500, help="number of test examples")
    cert.add_argument("--num-samples", type=int, default=10_000,
                      help="noise draws that bound the top class (Cohen et al.'s n)")
    cert.add_argument("--num-samples-selection", type=int, default=100,
                      help="noise draws that choose the class (n0)")
    cert.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    cert.add_argument("--radii", default="0.25,0.5,0.75,1.0",
                      help="comma-separated L2 radii of the certified-accuracy table")
    cert.add_argument("--batch-size", type=int, default=1000,
                      help="noisy images per call of the model")
    cert.add_argument("--seed", type=int, default=0)
    cert.add_argument("--out", default="certification.json",
                      help="JSON path: the summary and every example's class and radius")
    cert.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                      help="import this module first (custom layers; repeatable)")
    cert.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _load_model(path, imports):
    import keras

    import manidefense  # noqa: F401 - registers the library's layers and models

    if not os.path.exists(path):
        raise ValueError(f"Argument `--model` must be an existing .keras file. "
                         f"Received: {path!r}")
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"Argument `--import` must name an importable module. "
                             f"Received: {module!r} ({err})") from err
    return keras.saving.load_model(path, safe_mode=True)


def run_evaluate(args: argparse.Namespace) -> "RobustnessReport":
    """`manidefense evaluate`: returns the `RobustnessReport`.

    Args:
        args: the parsed `manidefense evaluate` arguments (`main` parses them).

    Returns:
        The report, also written as JSON to `args.out` (and Markdown to `args.markdown`).

    Example:
    >>> main(["evaluate", "--model", "model.keras", "--eps", "0.1", "--n", "200"])  # doctest: +SKIP
    0
    """
    import manidefense as md

    strategy = _strategy(getattr(args, "strategy", "none"))
    if strategy is None:
        model = _load_model(args.model, args.imports)
    else:
        with strategy.scope():  # every device gets its own copy of the weights
            model = _load_model(args.model, args.imports)
    x, y = md.datasets.load(args.dataset, args.split, limit=args.n)
    attacks = None if not args.attacks else [a.strip() for a in args.attacks.split(",")]
    report = md.evaluation.evaluate_robustness(
        model, x, y, attacks, eps=args.eps, norm=args.norm, checks=args.checks,
        eot_samples=args.eot_samples, batch_size=args.batch_size, seed=args.seed,
        state_path=args.state, chunk_size=args.chunk_size, strategy=strategy,
        verbose=not args.quiet,
    )
    report.meta["dataset"] = f"{args.dataset}/{args.split}[:{len(x)}]"
    report.to_json(args.out)
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown())
    return report


def _strategy(name):
    """The `tf.distribute` strategy `--strategy` names (None for "none")."""
    import tensorflow as tf

    return {"none": lambda: None, "mirrored": tf.distribute.MirroredStrategy,
            "multiworker": tf.distribute.MultiWorkerMirroredStrategy}[name]()


def run_demo(dataset: str = "fashion_mnist", train_size: int = 12000, epochs: int = 3,
             test_size: int = 1000, batch_size: int = 128, seed: int = 0,
             out: str | os.PathLike = "manidefense-demo", verbose: bool = True, rbf: bool = True,
             rbf_test_size: int = 200, em_steps: int = 500) -> dict[str, Any]:
    """Trains `zoo.small_cnn`, attacks it, writes a PNG grid, a JSON of the results and the
    trained model (`model.keras`, ready for `manidefense evaluate --model`).

    With `rbf`, also fits an RBF layer, trains the same CNN on reconstructed images (rCNN),
    wraps it with `layers.rbf_defense` (β2 = 1.75, 10 draws), saves it as
    `rbf_defense.keras` and adds its rows: clean accuracy on the test images, and FGSM and
    PGD-L∞ through BPDA + EoT (the paper's adaptive attack) on the first `rbf_test_size`.

    Args:
        dataset: a name of `datasets.NAMES`.
        train_size: training images.
        epochs: training epochs.
        test_size: test images attacked.
        batch_size: training batch size.
        seed: seed of the weights, the data order and the attacks.
        out: output folder.
        verbose: print progress.
        rbf: also build and attack the RBF-CNN defense.
        rbf_test_size: test images for the adaptive attacks on the RBF defense.
        em_steps: M-steps of the RBF layer's EM.

    Returns:
        A dict with the clean and adversarial accuracies, timings and written file paths.

    Example:
    >>> results = run_demo("synthetic", train_size=500, epochs=1, test_size=100,
    ...                    rbf=False, out="demo", verbose=False)  # doctest: +SKIP
    >>> print(format_table(results))  # doctest: +SKIP
    """
    import keras

    import manidefense as md

    keras.utils.set_random_seed(seed)
    x_train, y_train = md.datasets.load(dataset, "train", limit=train_size)
    x_test, y_test = md.datasets.load(dataset, "test", limit=test_size)
    num_classes = md.datasets.num_classes(dataset)
    model = md.zoo.small_cnn(x_train.shape[1:], num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2 if verbose else 0)
    results = {"dataset": dataset, "train_size": len(x_train), "epochs": epochs,
               "train_seconds": time.perf_counter() - start, "test_size": len(x_test),
               "rows": []}

    def accuracy(x):
        predicted = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)
        return predicted, float(np.mean(predicted == y_test))

    predicted, clean = accuracy(x_test)
    results["rows"].append({"attack": "clean", "budget": "-", "accuracy": clean,
                            "mean_distance": 0.0, "seconds": 0.0})
    adversarials, predictions = {}, {"clean": predicted}
    for name, cls, kwargs in DEMO_ATTACKS:
        attack = getattr(md.attacks, cls)(**kwargs, batch_size=batch_size, seed=seed,
                                          verbose=verbose)
        start = time.perf_counter()
        x_adv = attack(model, x_test, y_test)
        seconds = time.perf_counter() - start
        predictions[name], acc = accuracy(x_adv)
        dist = md.attacks.norms.distance(x_test, x_adv, attack.norm)
        adversarials[name] = x_adv
        results["rows"].append({
            "attack": name, "budget": f"{attack.norm} eps={attack.eps:g}", "accuracy": acc,
            "mean_distance": float(np.mean(dist)), "seconds": seconds, "config": repr(attack),
        })
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["files"] = _write_outputs(out, x_test, y_test, adversarials, predictions,
                                      md.datasets.class_names(dataset), results)
    model.save(out / "model.keras")
    results["files"]["model"] = str(out / "model.keras")
    if rbf:
        defended = _rbf_rows(results, x_train, y_train, x_test, y_test, num_classes, epochs,
                             batch_size, seed, rbf_test_size, em_steps, verbose)
        defended.save(out / "rbf_defense.keras")
        results["files"]["rbf_model"] = str(out / "rbf_defense.keras")
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _rbf_rows(results, x_train, y_train, x_test, y_test, num_classes, epochs, batch_size, seed,
              n, em_steps, verbose):
    """RBF-CNN rows of the demo; returns the defended model."""
    import keras
    from keras import ops

    import manidefense as md
    from manidefense.layers import TRAIN_BETA1, RBFLayer, ReconstructionLayer, rbf_defense

    start = time.perf_counter()
    rbf = RBFLayer(em_steps=em_steps, birth_steps=max(1, em_steps // 2), seed=seed)
    rbf.adapt(x_train, verbose=verbose)
    # rCNN: the classifier learns on reconstructions at the authors' training sharpness; they
    # are deterministic at β2 = 0, so they are computed once.
    train_recon = ReconstructionLayer(rbf, beta1=TRAIN_BETA1, clip=False)
    x_rec = np.concatenate([ops.convert_to_numpy(train_recon(x_train[i:i + 512]))
                            for i in range(0, len(x_train), 512)])
    classifier = md.zoo.small_cnn(x_train.shape[1:], num_classes, name="rcnn")
    classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1), metrics=["accuracy"])
    classifier.fit(x_rec, keras.utils.to_categorical(y_train, num_classes), epochs=epochs,
                   batch_size=64, verbose=2 if verbose else 0)
    defended = rbf_defense(classifier, rbf, beta2=1.75, num_samples=10, seed=seed)
    results["rbf"] = {"filters": rbf.num_filters, "train_seconds": time.perf_counter() - start,
                      "beta2": 1.75, "num_samples": 10, "eot_samples": 20, "test_size": n}
    predicted = np.argmax(defended.predict(x_test, batch_size=256, verbose=0), axis=-1)
    results["rows"].append({"attack": "RBF clean", "budget": "-", "model": "rbf_defense",
                            "accuracy": float(np.mean(predicted == y_test)),
                            "mean_distance": 0.0, "seconds": 0.0})
    # BPDA (backward through the noise-free reconstruction) + EoT: 20 draws per gradient,
    # i.e. 2 calls of the model, which averages 10 draws per call.
    attack_model, _ = md.attacks.adaptive_model(defended, eot_samples=20)
    x, y = x_test[:n], y_test[:n]
    for name, cls, kwargs in DEMO_ATTACKS[:2]:
        attack = getattr(md.attacks, cls)(**kwargs, batch_size=batch_size, seed=seed,
                                          verbose=verbose)
        began = time.perf_counter()
        x_adv = attack(attack_model, x, y)
        seconds = time.perf_counter() - began
        predicted = np.argmax(defended.predict(x_adv, batch_size=256, verbose=0), axis=-1)
        results["rows"].append({
            "attack": f"RBF {name}", "budget": f"{attack.norm} eps={attack.eps:g}",
            "model": "rbf_defense (BPDA+EoT)", "accuracy": float(np.mean(predicted == y)),
            "mean_distance": float(np.mean(md.attacks.norms.distance(x, x_adv, attack.norm))),
            "seconds": seconds, "config": repr(attack), "test_size": n})
    return defended


def _write_outputs(out, x, y, adversarials, predictions, class_names, results):
    from manidefense.visualization import plot_adversarial_grid

    axes = plot_adversarial_grid(x, adversarials, labels=y, predictions=predictions,
                                 class_names=class_names, num_examples=6)
    png = out / "adversarial_examples.png"
    axes.flat[0].figure.savefig(png, dpi=110)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return {"png": str(png), "json": str(path)}


def format_table(results: Mapping[str, Any]) -> str:
    """The demo's results as a fixed-width text table.

    Args:
        results: a dict with `"rows"`, each with `attack`, `budget`, `accuracy`,
            `mean_distance` and `seconds` (as `run_demo` returns).

    Returns:
        The table, one line per row under a header.

    Example:
    >>> print(format_table({"rows": [{"attack": "PGD-Linf", "budget": "eps=0.1",
    ...                               "accuracy": 0.05, "mean_distance": 0.098, "seconds": 3.2}]}))
    attack         budget            accuracy  mean dist  seconds
    PGD-Linf       eps=0.1               5.0%      0.098      3.2
    """
    lines = [f"{'attack':<14} {'budget':<16} {'accuracy':>9} {'mean dist':>10} {'seconds':>8}"]
    for row in results["rows"]:
        lines.append(
            f"{row['attack']:<14} {row['budget']:<16} {100 * row['accuracy']:>8.1f}% "
            f"{row['mean_distance']:>10.3f} {row['seconds']:>8.1f}"
        )
    return "\n".join(lines)


def run_certify(args: argparse.Namespace) -> dict[str, Any]:
    """`manidefense certify`: returns the summary dict (also written to `args.out`).

    Args:
        args: the parsed `manidefense certify` arguments (`main` parses them).

    Returns:
        The summary: settings, the certified-accuracy table, the ACR, and every example's
        class and radius.

    Example:
    >>> main(["certify", "--model", "model.keras", "--sigma", "0.5"])  # doctest: +SKIP
    0
    """
    import manidefense as md
    from manidefense.certification import (
        SmoothedClassifier,
        average_certified_radius,
        certified_accuracy,
        max_certifiable_radius,
    )
    from manidefense.stats import clopper_pearson

    try:
        radii_grid = [float(r) for r in args.radii.split(",") if r.strip()]
    except ValueError:
        raise ValueError("Argument `--radii` must be comma-separated numbers. "
                         f"Received: {args.radii!r}") from None
    model = _load_model(args.model, args.imports)
    base, sigma = model, args.sigma
    if isinstance(model, SmoothedClassifier):
        base, sigma = model.base_model, sigma or model.sigma
    if sigma is None:
        raise ValueError("Argument `--sigma` is required unless the model is a saved "
                         "SmoothedClassifier. Received: no --sigma")
    x, y = md.datasets.load(args.dataset, args.split, limit=args.n)
    num_classes = int(base(x[:1]).shape[-1])
    smoothed = SmoothedClassifier(base, num_classes, sigma, batch_size=args.batch_size,
                                  seed=args.seed)
    began = time.time()
    classes, radii = smoothed.certify(x, args.num_samples_selection, args.num_samples,
                                      alpha=args.alpha, verbose=not args.quiet)
    seconds = time.time() - began
    cap = max_certifiable_radius(sigma, args.num_samples, args.alpha)
    rows = []
    for r in [0.0, *radii_grid]:
        k = int(round(certified_accuracy(radii, classes, y, r) * len(y)))
        low, high = clopper_pearson(k, len(y))
        rows.append({"radius": r, "certified_accuracy": k / len(y), "ci95": [low, high],
                     "above_max_radius": r > cap})
    summary = {
        "model": args.model, "dataset": f"{args.dataset}/{args.split}[:{len(x)}]",
        "sigma": sigma, "num_samples": args.num_samples,
        "num_samples_selection": args.num_samples_selection, "alpha": args.alpha,
        "seed": args.seed, "max_certifiable_radius": cap, "seconds": seconds,
        "abstained": float(np.mean(classes == md.certification.ABSTAIN)),
        "acr": average_certified_radius(radii, classes, y), "table": rows,
        "classes": classes.tolist(), "radii": radii.tolist(), "labels": y.tolist(),
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


def format_certification(summary: Mapping[str, Any]) -> str:
    """The Markdown table `manidefense certify` prints.

    Args:
        summary: the dict `run_certify` returns (or its JSON file, loaded).

    Returns:
        Markdown: the settings, certified accuracy per radius with 95% intervals, the ACR.

    Example:
    >>> summary = json.loads(Path("certification.json").read_text())  # doctest: +SKIP
    >>> print(format_certification(summary))  # doctest: +SKIP
    """
    lines = [f"Randomized smoothing of {summary['model']} on {summary['dataset']}: "
             f"σ = {summary['sigma']}, n0 = {summary['num_samples_selection']}, "
             f"n = {summary['num_samples']}, α = {summary['alpha']} "
             f"({summary['seconds']:.0f} s).", "",
             "| L2 radius | certified accuracy | 95% CI |", "|---|---|---|"]
    for row in summary["table"]:
        low, high = row["ci95"]
        label = "0 (smoothed accuracy)" if row["radius"] == 0 else f"{row['radius']:g}"
        if row["above_max_radius"]:
            lines.append(f"| {label} | — (above the largest certifiable radius) | |")
        else:
            lines.append(f"| {label} | {100 * row['certified_accuracy']:.1f}% | "
                         f"[{100 * low:.1f}, {100 * high:.1f}] |")
    cap = summary["max_certifiable_radius"]
    lines += ["", f"Average certified radius (ACR): {summary['acr']:.3f}; abstained on "
                  f"{100 * summary['abstained']:.1f}%; the largest radius n = "
                  f"{summary['num_samples']} can certify is {cap:.3f}."]
    return "\n".join(lines)


def _guarded(command, run, args):
    """`run(args)`, or None after printing a bad-argument or missing-data error."""
    from manidefense.datasets import DatasetNotFoundError

    try:
        return run(args)
    except (DatasetNotFoundError, ValueError) as err:
        print(f"manidefense {command}: {err}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `manidefense` console script.

    Args:
        argv: the arguments after the program name; None reads `sys.argv`.

    Returns:
        The exit status: 0 on success, 2 for a bad argument or missing data.

    Example:
    >>> main(["demo", "--dataset", "synthetic", "--train-size", "500", "--epochs", "1",
    ...       "--test-size", "100", "--no-rbf", "--out", "demo"])  # doctest: +SKIP
    0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from manidefense.datasets import DatasetNotFoundError

        try:
            results = run_demo(args.dataset, args.train_size, args.epochs, args.test_size,
                               args.batch_size, args.seed, args.out, rbf=args.rbf,
                               rbf_test_size=args.rbf_test_size, em_steps=args.em_steps)
        except (DatasetNotFoundError, ValueError) as err:
            print(f"manidefense demo: {err}", file=sys.stderr)
            return 2
        print()
        print(f"{results['dataset']}: small_cnn trained on {results['train_size']} images "
              f"for {results['epochs']} epochs in {results['train_seconds']:.0f} s; "
              f"accuracy on {results['test_size']} test images:")
        print(format_table(results))
        if "rbf" in results:
            info = results["rbf"]
            print(f"\nRBF rows: {info['filters']} RBF filters and an rCNN trained in "
                  f"{info['train_seconds']:.0f} s; defended model averages "
                  f"{info['num_samples']} draws at β2 = {info['beta2']}; attacks use BPDA + "
                  f"EoT ({info['eot_samples']} draws per gradient) on the first "
                  f"{info['test_size']} test images.")
        files = [results["files"][k] for k in ("png", "json", "model", "rbf_model")
                 if k in results["files"]]
        print(f"\nWrote {', '.join(files)}")
    elif args.command == "evaluate":
        report = _guarded("evaluate", run_evaluate, args)
        if report is None:
            return 2
        print(report.to_markdown())
        print(f"Wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
    elif args.command == "certify":
        summary = _guarded("certify", run_certify, args)
        if summary is None:
            return 2
        print(format_certification(summary))
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
