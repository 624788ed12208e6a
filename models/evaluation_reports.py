"""Two honest evaluations: the demo CNN, and a gradient-masked toy defense the flags must catch.

1. The demo CNN (`manidefense demo`: `zoo.small_cnn()` on 12,000 Fashion-MNIST images, 3
   epochs), evaluated with the default cascade (APGD-CE, APGD-T, Square) at L∞ eps = 0.1 with
   every check (`checks="full"`).
2. The same CNN behind an input quantiser (4 grey levels) that does NOT declare itself
   non-differentiable: the textbook shattered-gradient defense. Gradient attacks see zero
   gradients and report it robust; the checklist must flag it (E9 zero gradients, E10
   unbounded attack fails, E13 the gradient-free attack wins) and the worst case must still
   be low because Square does not need gradients.
3. The same quantiser declaring `non_differentiable = True`: the evaluation wraps it in BPDA
   by itself, and the gradient attacks work again.

Writes the three Markdown reports to `models/RESULTS.md` (section `## evaluation_reports`)
and the JSON reports next to it in `models/results/`. About 10 minutes on 2 CPU cores
(training the demo CNN takes 2-3 of them; the model is cached in `manidefense-demo/`).

Usage:
    .venv/bin/python models/evaluation_reports.py [--n 1000] [--eps 0.1]
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

import manidefense as md  # noqa: E402
import manidefense.cli  # noqa: E402, F401 - run_demo trains the demo model
from manidefense._markdown import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Quantize(keras.layers.Layer):
    """Rounds inputs to `levels` grey levels: zero gradient almost everywhere."""

    def __init__(self, levels=4, declared=False, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels
        self.non_differentiable = declared

    def call(self, inputs):
        return ops.round(inputs * (self.levels - 1)) / (self.levels - 1)


def demo_model(out):
    if not (out / "model.keras").exists():
        md.cli.run_demo(out=out, verbose=False, rbf=False)
    return keras.saving.load_model(out / "model.keras")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--demo-dir", default=str(ROOT / "manidefense-demo"))
    args = parser.parse_args(argv)
    model = demo_model(Path(args.demo_dir))
    x, y = md.datasets.load("fashion_mnist", "test", limit=args.n)
    shape = x.shape[1:]
    cases = {
        "The demo CNN": model,
        "A masked toy defense (undeclared quantiser)": keras.Sequential(
            [keras.Input(shape), Quantize(declared=False), model], name="masked_toy"),
        "The same quantiser, declared non-differentiable": keras.Sequential(
            [keras.Input(shape), Quantize(declared=True), model], name="declared_toy"),
    }
    results = ROOT / "models" / "results"
    results.mkdir(exist_ok=True)
    parts = ["## evaluation_reports", "",
             f"Written by `models/evaluation_reports.py` (Fashion-MNIST test[:{args.n}], L∞ "
             f"eps = {args.eps:g}, default cascade, `checks=\"full\"`).", ""]
    for i, (title, defended) in enumerate(cases.items()):
        print(f"[{i + 1}/{len(cases)}] {title}", file=sys.stderr)
        report = md.evaluation.evaluate_robustness(defended, x, y, eps=args.eps, norm="linf",
                                                   checks="full", seed=0, verbose=True)
        report.to_json(results / f"evaluation_report_{i + 1}.json")
        body = report.to_markdown().replace("## Robustness report", f"### {title}")
        parts += [body, ""]
    text = "\n".join(parts)
    update_section(ROOT / "models" / "RESULTS.md", "evaluation_reports", text,
                   "# Results of the recipes in models/\n")
    print(text)


if __name__ == "__main__":
    main()
