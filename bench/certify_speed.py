"""How close is randomized-smoothing sampling to the cost of the noisy forward passes it needs?

Cohen et al.'s PREDICT/CERTIFY classify many Gaussian-noise copies of each input: the work no
implementation can skip is pushing those noisy images through the base model. This benchmark
times `manidefense.certification.SmoothedClassifier` on Fashion-MNIST-shaped inputs (28×28×1,
uniform random values in [0, 1], seed 0) with `zoo.small_cnn(width=16)` as the base (random
weights: only speed is measured, and the cost does not depend on the votes), σ = 0.25:

1. `sample_counts(x, n, batch_size)` for a few (examples, n, batch) settings: one example with
   many draws (the library loops over noise batches inside one compiled `tf.while_loop`),
   many examples with few draws (it packs several examples into one base-model call), and an
   `n` that is not a multiple of `batch_size` (the library splits n into equal rounds, so at
   most rounds − 1 draws per example are surplus; the "drawn" column counts them).
2. `certify(x, 100, n)` end to end on 20 examples (input checks, selection, estimation,
   Clopper–Pearson bound, radius).
3. The floor alone at batch sizes 100, 250 and 1,000: the base model's cost per image
   depends on the batch size (cache effects on CPU), which `batch_size=` chooses.

Each is compared with
- **the floor**: the same number of noisy images (examples × draws) pushed through a
  compiled `tf.function(lambda z: argmax(base(z + noise)))` on batches of `batch_size`
  (noise generation included; the last batch is partial), called from a Python loop. Target:
  the library ≤ 1.15× its floor.
- **the peers' structure** (ART's `RandomizedSmoothingMixin.certify`/`_prediction_counts`): a
  Python loop over examples; for each, the example repeated n times plus NumPy Gaussian noise
  (float64, cast to float32 for the model), classified by eager `base(batch)` calls on batches
  of `batch_size` (what ART's TensorFlow-v2 classifier does in `predict`), then argmax and a
  per-class count. `--peers eager,predict_on_batch` adds the same loop with
  `base.predict_on_batch` (a compiled Keras predict step) instead of the eager call.

All variants are warmed up on a full batch (tracing is not timed), then timed in interleaved
rounds (the order rotates every round) and the median per variant is kept. Wall clock and the
process's CPU time are both recorded, and /proc/stat tells how many cores other processes used
during each timing (as in `attack_speed.py`): a ratio is decided on quiet timings (others
used < 0.25 cores) when both sides have some, on CPU time otherwise. Only ratios within one run
are meaningful.

Usage:
    .venv/bin/python bench/certify_speed.py          # ≈3 min idle (est.); updates BENCHMARKS.md
    .venv/bin/python bench/certify_speed.py --quick  # ten times fewer draws, 1 round; no write
"""

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense.certification import SmoothedClassifier  # noqa: E402
from manidefense.stats import lower_confidence_bound  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import (  # noqa: E402
    QUIET,
    Variant,
    fmt_cores,
    load_average,
    machine_info,
    measure,
    write_section,
)

SECTION = "certify_speed"
ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
SIGMA = 0.25
ALPHA = 0.001
TARGET_RATIO = 1.15
# (label, examples, draws per example, batch size) of the sample_counts settings.
SETTINGS = (
    ("one example, many draws", 1, 10_000, 1_000),
    ("many examples, few draws", 50, 100, 1_000),
    ("n not a multiple of the batch", 4, 1_500, 1_000),
)
CERTIFY_EXAMPLES, CERTIFY_N0, CERTIFY_BATCH = 20, 100, 1_000
BATCH_SIZES, BATCH_IMAGES = (100, 250, 1_000), 5_000  # the floor's cost per image vs batch


def clocked(fn):
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def library_drawn(examples, n, batch):
    """Noisy images `SmoothedClassifier.sample_counts` classifies (equal rounds of `chunk`)."""
    rounds = -(-n // min(n, batch))
    chunk = -(-n // rounds)
    return examples * rounds * chunk


class Bench:
    """The base model, the smoothed classifier and the floor/peer implementations."""

    def __init__(self, width, seed=0):
        keras.utils.set_random_seed(seed)
        self.base = md.zoo.small_cnn(input_shape=(28, 28, 1), num_classes=NUM_CLASSES,
                                     width=width)
        self.smoothed = SmoothedClassifier(self.base, NUM_CLASSES, SIGMA, seed=seed)
        self.rng = np.random.default_rng(seed)
        base = self.base

        @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)])
        def noisy_argmax(z):
            noise = tf.random.normal(tf.shape(z), stddev=SIGMA)
            return tf.argmax(base(z + noise, training=False), axis=-1)

        self.noisy_argmax = noisy_argmax

    def floor(self, x, n, batch):
        """examples × n noisy images on batches of `batch` through the compiled forward."""
        total = len(x) * n
        z = tf.constant(np.repeat(x[:1], min(batch, total), axis=0))
        last = None
        for start in range(0, total, batch):
            last = self.noisy_argmax(z[:min(batch, total - start)])
        return last.numpy()

    def peer_counts(self, x, n, batch, predict_on_batch=False):
        """ART's structure: per example, NumPy noise on n copies, per-batch model calls."""
        counts = np.zeros((len(x), NUM_CLASSES), dtype=np.int64)
        for i, example in enumerate(x):
            copies = np.repeat(example[None], n, axis=0)
            noisy = (copies + self.rng.normal(scale=SIGMA, size=copies.shape)).astype(np.float32)
            for start in range(0, n, batch):
                rows = noisy[start:start + batch]
                if predict_on_batch:
                    outputs = self.base.predict_on_batch(rows)
                else:
                    outputs = self.base(rows, training=False).numpy()
                counts[i] += np.bincount(np.argmax(outputs, axis=-1), minlength=NUM_CLASSES)
        return counts

    def peer_certify(self, x, n0, n, batch, predict_on_batch=False):
        selected = np.argmax(self.peer_counts(x, n0, batch, predict_on_batch), axis=1)
        counts = self.peer_counts(x, n, batch, predict_on_batch)
        p_lower = np.asarray(lower_confidence_bound(counts[np.arange(len(x)), selected], n,
                                                    ALPHA), dtype=np.float64)
        certified = p_lower > 0.5
        radii = SIGMA * tf.math.ndtri(np.where(certified, p_lower, 0.5)).numpy()
        return np.where(certified, selected, -1), np.where(certified, radii, 0.0)


def make_groups(bench, args):
    """[(group dict, [Variant, ...])]: one group per setting, floor first, library second."""
    x_all = np.random.default_rng(0).uniform(
        0, 1, (max(max(s[1] for s in args.settings), CERTIFY_EXAMPLES), 28, 28, 1)
    ).astype(np.float32)
    smoothed = bench.smoothed
    groups = []

    def peers(key, x, batch, make):
        out = []
        for peer in args.peers:
            pob = peer == "predict_on_batch"
            label = ("Python loop, `predict_on_batch`" if pob
                     else "Python loop, eager `base(...)` (ART's structure)")
            out.append(Variant(f"{key}/{peer}", label,
                               lambda p=pob: make(x[:1], batch, p, warm=True),
                               lambda p=pob: clocked(lambda: make(x, batch, p, warm=False)),
                               "peer"))
        return out

    for index, (label, examples, n, batch) in enumerate(args.settings):
        key = f"s{index}"
        x = x_all[:examples]
        group = {"key": key, "label": f"`sample_counts`: {label}", "examples": examples,
                 "n": n, "batch": batch, "needed": examples * n,
                 "drawn": library_drawn(examples, n, batch)}

        def peer_fn(xs, b, pob, warm, n=n):
            return bench.peer_counts(xs, min(n, b) if warm else n, b, pob)

        groups.append((group, [
            Variant(f"{key}/floor", "floor: compiled noisy forward, Python loop over batches",
                    lambda x=x, b=batch: bench.floor(x[:1], b, b),
                    lambda x=x, n=n, b=batch: clocked(lambda: bench.floor(x, n, b)), "floor"),
            Variant(f"{key}/library", "`SmoothedClassifier.sample_counts`",
                    lambda x=x, b=batch: smoothed.sample_counts(x[:1], b, b),
                    lambda x=x, n=n, b=batch: clocked(lambda: smoothed.sample_counts(x, n, b)),
                    "library"),
            *peers(key, x, batch, peer_fn),
        ]))

    n, n0, batch = args.certify_n, CERTIFY_N0, CERTIFY_BATCH
    x = x_all[:CERTIFY_EXAMPLES]
    group = {"key": "certify", "label": f"`certify(x, {n0}, {n:,})`, end to end",
             "examples": CERTIFY_EXAMPLES, "n": n0 + n, "batch": batch,
             "needed": CERTIFY_EXAMPLES * (n0 + n),
             "drawn": library_drawn(CERTIFY_EXAMPLES, n0, batch)
             + library_drawn(CERTIFY_EXAMPLES, n, batch)}

    def peer_certify(xs, b, pob, warm):
        return bench.peer_certify(xs, n0, min(n, b) if warm else n, b, pob)

    groups.append((group, [
        Variant("certify/floor", "floor: compiled noisy forward, Python loop over batches",
                lambda: bench.floor(x[:1], batch, batch),
                lambda: clocked(lambda: bench.floor(x, n0 + n, batch)), "floor"),
        Variant("certify/library", "`SmoothedClassifier.certify`",
                lambda: smoothed.certify(x[:1], n0, min(n, batch), ALPHA, batch),
                lambda: clocked(lambda: smoothed.certify(x, n0, n, ALPHA, batch)), "library"),
        *peers("certify", x, batch, peer_certify),
    ]))
    return groups


def make_batch_variants(bench, args):
    """The floor alone at several batch sizes, on `images` noisy copies of one input."""
    x = np.random.default_rng(1).uniform(0, 1, (1, 28, 28, 1)).astype(np.float32)
    return [Variant(f"batch{b}", f"floor, batch {b:,}", lambda b=b: bench.floor(x, b, b),
                    lambda b=b: clocked(lambda: bench.floor(x, args.batch_images, b)), "batch")
            for b in BATCH_SIZES]


def run(args):
    bench = Bench(args.width)
    groups = make_groups(bench, args)
    batch_variants = make_batch_variants(bench, args)
    variants = [v for _, vs in groups for v in vs] + batch_variants
    load_start = load_average()
    t0 = time.perf_counter()
    for v in variants:
        start = time.perf_counter()
        v.warmup()
        print(f"warm-up {v.key:<28} {time.perf_counter() - start:6.1f} s", file=sys.stderr)
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            wall, cpu, others = measure(v)
            v.times.append(wall)
            v.cpu_times.append(cpu)
            v.others.append(others)
        print(f"round {r + 1}/{args.rounds} (wall s/CPU s/others' cores): " + ", ".join(
            f"{v.key} {v.times[-1]:.2f}/{v.cpu_times[-1]:.2f}/{fmt_cores(v.others[-1])}"
            for v in variants), file=sys.stderr)
    others = [o for v in variants for o in v.others if o is not None]
    return dict(groups=groups, batch_variants=batch_variants, elapsed=time.perf_counter() - t0,
                load=(load_start, load_average()),
                others=statistics.mean(others) if others else None)


def ratio(a, b):
    """(basis, a / b): quiet wall clock when both have quiet timings, else CPU time."""
    qa, qb = a.quiet_median(), b.quiet_median()
    if qa is not None and qb is not None:
        return "quiet wall", qa / qb
    return "CPU", a.median(cpu=True) / b.median(cpu=True)


def summary(result):
    """[(group, library/floor (basis, r), [(peer label, (basis, peer/library))])]."""
    rows = []
    for group, variants in result["groups"]:
        floor, library, *peers = variants
        rows.append((group, ratio(library, floor), [(p.label, ratio(p, library)) for p in peers]))
    return rows


def tables(args, result):
    detail = ["| setting | variant | median wall s | min–max wall s | quiet runs | CPU s "
              "| × floor (wall) | × floor (CPU) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for group, variants in result["groups"]:
        floor = variants[0]
        for v in variants:
            detail.append(
                f"| {group['label']} | {v.label} | {v.median():.2f} | {min(v.times):.2f}–"
                f"{max(v.times):.2f} | {len(v.quiet_times())}/{len(v.times)} | "
                f"{v.median(cpu=True):.2f} | {v.median() / floor.median():.2f} | "
                f"{v.median(cpu=True) / floor.median(cpu=True):.2f} |")
    short = ["| setting | examples × draws (batch) | images needed / drawn by the library "
             "| library × floor | speed-up over the Python loop |", "|---|---|---:|---:|---:|"]
    for group, (basis, r), peers in summary(result):
        speedups = "; ".join(f"{s:.2f}× ({b})" + ("" if len(peers) == 1 else f" vs {lab}")
                             for lab, (b, s) in peers) or "–"
        draws = (f"{group['examples']} × ({CERTIFY_N0} + {group['n'] - CERTIFY_N0:,})"
                 if group["key"] == "certify" else f"{group['examples']} × {group['n']:,}")
        short.append(f"| {group['label']} | {draws} ({group['batch']:,}) | "
                     f"{group['needed']:,} / {group['drawn']:,} | **{r:.2f}×** ({basis}) | "
                     f"{speedups} |")
    per = 1000 / args.batch_images
    reference = result["batch_variants"][-1]
    batches = [f"| batch | wall ms per 1,000 images | CPU ms per 1,000 images | quiet runs "
               f"| × batch {BATCH_SIZES[-1]:,} ({ratio(reference, reference)[0]}) |",
               "|---:|---:|---:|---:|---:|"]
    for b, v in zip(BATCH_SIZES, result["batch_variants"], strict=True):
        batches.append(f"| {b:,} | {1000 * per * v.median():.0f} | "
                       f"{1000 * per * v.median(cpu=True):.0f} | "
                       f"{len(v.quiet_times())}/{len(v.times)} | {ratio(v, reference)[1]:.2f} |")
    return "\n".join(short), "\n".join(detail), "\n".join(batches)


def interpretation(result):
    rows = summary(result)
    met = [g["label"] for g, (_, r), _ in rows if r <= TARGET_RATIO]
    missed = [f"{g['label']} {r:.2f}×" for g, (_, r), _ in rows if r > TARGET_RATIO]
    text = (f"Target ≤ {TARGET_RATIO}× the floor: met in {len(met)} of {len(rows)} settings"
            + (f"; missed in {', '.join(missed)}" if missed else "") + ".")
    uneven = [(g, r) for g, (_, r), _ in rows if g["drawn"] > 1.05 * g["needed"]]
    for g, r in uneven:
        extra = g["drawn"] / g["needed"]
        text += (f" In {g['label']} the library classifies {g['drawn']:,} images for "
                 f"{g['needed']:,} votes ({extra:.2f}×: the surplus of its equal rounds); "
                 f"per image classified it costs {r / extra:.2f}× the floor.")
    speedups = [s for _, _, peers in rows for _, (_, s) in peers[:1]]
    if speedups:
        text += (f" Against the peers' structure (Python loops over examples and noise "
                 f"batches, eager model calls) the library is {min(speedups):.1f}–"
                 f"{max(speedups):.1f}× faster.")
    return text


def section(args, result):
    today = datetime.date.today().isoformat()
    command = " ".join(["bench/certify_speed.py", *sys.argv[1:]])
    short, detail, batches = tables(args, result)
    lines = [
        f"## {SECTION}", "",
        f"Measured {today} by `{command}`; this section is rewritten on every full run. Only "
        "ratios measured in one run are comparable: absolute seconds depend on the load of "
        "the shared machine.", "",
        f"- Machine: {machine_info()}; load average (1/5/15 min) {result['load'][0]} at the "
        f"start, {result['load'][1]} at the end; other processes used "
        f"{fmt_cores(result['others'])} cores on average during the timed runs.",
        f"- Settings: `zoo.small_cnn(width={args.width})` (random weights, seed 0), uniform "
        f"random 28×28×1 inputs, σ = {SIGMA}, α = {ALPHA}. Warm-up on one full batch per "
        f"variant, then {args.rounds} interleaved rounds (order rotated), median per variant.",
        "- Floor: the same number of noisy images (examples × draws) through a compiled "
        "`tf.function(lambda z: argmax(base(z + noise)))`, one call per batch (last one "
        "partial), noise generated inside. Peers: ART's structure (per example: n copies + "
        "NumPy float64 noise, cast to float32; eager `base(batch)` per batch; argmax, count); "
        "for `certify` the same loop for the selection and the estimation draws, then the "
        "same Clopper–Pearson bound.",
        f"- Ratios are decided on quiet timings (other processes used < {QUIET} cores, from "
        "/proc/stat) when both sides have some, on process CPU time otherwise; the basis is "
        "given next to each ratio.",
        f"- Total time of the run (warm-up included): {result['elapsed'] / 60:.1f} min.",
        "", short, "", interpretation(result), "",
        f"The floor's cost per image depends on the batch size ({args.batch_images:,} noisy "
        "images of one input per timing; `SmoothedClassifier(batch_size=...)` picks it, "
        f"default 1,000):", "", batches, "", "<details><summary>all timings</summary>",
        "", detail, "", "</details>", "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="ten times fewer draws and examples, 1 round; implies --no-write")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--certify-n", type=int, default=1_000,
                        help="estimation draws n of certify(x, 100, n) (default 1,000)")
    parser.add_argument("--batch-images", type=int, default=BATCH_IMAGES,
                        help="noisy images per timing of the batch-size table (default 5,000)")
    parser.add_argument("--width", type=int, default=16, help="small_cnn width (default 16)")
    parser.add_argument("--peers", type=lambda s: [p for p in s.split(",") if p],
                        default=["eager"], help="comma-separated subset of eager,predict_on_batch")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    unknown = set(args.peers) - {"eager", "predict_on_batch"}
    if unknown:
        parser.error(f"unknown --peers {sorted(unknown)}; choose from eager,predict_on_batch")
    if min(args.rounds, args.certify_n, args.width, args.batch_images) < 1:
        parser.error("--rounds, --certify-n, --width and --batch-images must be positive")
    args.settings = SETTINGS
    if args.quick:
        args.settings = tuple((label, max(1, e // 10), max(10, n // 10), b // 10)
                              for label, e, n, b in SETTINGS)
        args.certify_n, args.rounds, args.no_write = max(100, args.certify_n // 10), 1, True
        args.batch_images = max(BATCH_SIZES[-1], args.batch_images // 5)
    return args


def main(argv=None):
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    result = run(args)
    text = section(args, result)
    print(text)
    if not args.no_write:
        write_section(args.output, text, SECTION)
        print(f"wrote section '## {SECTION}' of {args.output}")


if __name__ == "__main__":
    main()
