"""How fast is a model shell's search, against its floor and against the authors' structure?

`ModelShell(cnn, MCN(delta, num_steps))` on a batch of Fashion-MNIST-shaped inputs, C = 10
classes. MCN tiles the batch over the classes and runs one targeted PGD on all C × batch rows
in one compiled graph. Timed against:

1. **the floor**: `num_steps` compiled forward+backward passes on the C × batch tiled rows
   (= C × num_steps passes on the batch, the work no first-order MCN can skip), plus the two
   forward passes that score the candidates and the chosen points;
2. **a per-class Python loop** over the batch (one compiled targeted PGD per class, then the
   most confident candidate), target: MCN ≥ 5× faster is the issue's goal for the structure
   below, and this one shows what batching over the classes alone buys;
3. **the authors' structure** (original-code-notes §2): one input at a time, one targeted
   search per class, each a compiled PGD call on a single row.

The reference CNN is `zoo.small_cnn(width=16)` (untrained: only speed is measured). All
variants are warmed up, then timed in interleaved rounds (median); wall and process CPU time
are both recorded because the machine is shared.

Usage:
    .venv/bin/python bench/shell_speed.py           # ≈2–4 min; updates BENCHMARKS.md
    .venv/bin/python bench/shell_speed.py --quick   # batch 8, 1 round; no write
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
from keras import ops  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense.attacks.gradients import logits_function, value_and_grad  # noqa: E402
from manidefense.attacks.objectives import objective  # noqa: E402
from manidefense.attacks.pgd import pgd_loop  # noqa: E402
from manidefense.shells import MCN, ModelShell  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import load_average, machine_info, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10


def clocked(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def variants(model, x, delta, num_steps):
    shell = ModelShell(model, MCN(delta, num_steps=num_steps))
    logits_fn = logits_function(model)
    step = 2.5 * delta / num_steps
    tiled = tf.constant(np.repeat(x, NUM_CLASSES, axis=0))
    classes = tf.constant(np.tile(np.arange(NUM_CLASSES), len(x)), tf.int64)

    @tf.function
    def floor(z, labels):
        def body(i, z):
            _, _, grad = value_and_grad(
                lambda u: (objective("ce", logits_fn(u), labels, labels), None), z)
            return z + 0.0 * grad
        z = ops.fori_loop(0, num_steps, body, z)
        return logits_fn(z) + logits_fn(z)

    @tf.function(reduce_retracing=True)
    def targeted(z, labels):
        return pgd_loop(logits_fn, z, labels, labels, eps=delta, norm="linf", step_size=step,
                        num_steps=num_steps, random_start=False)[0]

    def per_class(rows):
        candidates, scores = [], []
        for t in range(NUM_CLASSES):
            labels = tf.fill((len(rows),), tf.constant(t, tf.int64))
            z = targeted(rows, labels)
            candidates.append(z)
            scores.append(tf.nn.softmax(logits_fn(z))[:, t])
        best = tf.argmax(tf.stack(scores, 1), 1)
        return tf.gather(tf.stack(candidates, 1), best, batch_dims=1)

    xb = tf.constant(x)
    single = [tf.constant(x[i:i + 1]) for i in range(len(x))]
    return {
        "MCN (ModelShell.search)": lambda: shell.search(x, batch_size=len(x)),
        "floor": lambda: floor(tiled, classes).numpy(),
        "per-class loop": lambda: per_class(xb).numpy(),
        "authors' structure": lambda: [per_class(row).numpy() for row in single],
    }


def run(args):
    keras.utils.set_random_seed(0)
    model = md.zoo.small_cnn(input_shape=(28, 28, 1), num_classes=NUM_CLASSES, width=16)
    x = np.random.default_rng(0).uniform(0, 1, (args.batch_size, 28, 28, 1)).astype(np.float32)
    fns = variants(model, x, args.delta, args.num_steps)
    for fn in fns.values():
        fn()  # warm-up: traces every graph
    names = list(fns)
    walls = {n: [] for n in names}
    cpus = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = clocked(fns[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {n: (statistics.median(walls[n]), statistics.median(cpus[n])) for n in names}


def section(args, times, started):
    today = datetime.date.today().isoformat()
    mcn_wall, mcn_cpu = times["MCN (ModelShell.search)"]
    floor_wall, floor_cpu = times["floor"]
    lines = [
        "## shell_speed", "",
        f"Measured {today} by `bench/shell_speed.py`. Machine: {machine_info()}; load average "
        f"at the end {load_average()}; total {(time.time() - started) / 60:.1f} min.", "",
        f"MCN L∞ (δ = {args.delta}, {args.num_steps} steps, {NUM_CLASSES} classes) on a batch "
        f"of {args.batch_size} 28×28×1 inputs, `zoo.small_cnn(width=16)`; median of "
        f"{args.rounds} interleaved rounds. Floor = {args.num_steps} compiled forward+backward "
        f"passes on the {NUM_CLASSES} × {args.batch_size} tiled rows + 2 forward passes.", "",
        "| variant | wall s | CPU s | × floor (wall) | × floor (CPU) | MCN speed-up (wall) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in times.items():
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / floor_wall:.2f} | "
                     f"{cpu / floor_cpu:.2f} | {wall / mcn_wall:.1f}× |")
    authors = times["authors' structure"][0] / mcn_wall
    ratio = mcn_wall / floor_wall
    lines += ["", f"Targets: MCN ≤ 1.3× its floor ({'met' if ratio <= 1.3 else 'NOT met'}: "
              f"{ratio:.2f}× wall, {mcn_cpu / floor_cpu:.2f}× CPU); ≥ 5× faster than the "
              f"authors' per-example, per-class structure "
              f"({'met' if authors >= 5 else 'NOT met'}: {authors:.1f}×)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, 1 round; no write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.no_write = 8, 1, True
    return args


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    text = section(args, run(args), started)
    print(text)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", text, "shell_speed")


if __name__ == "__main__":
    main()
