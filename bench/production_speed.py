"""What do the production paths cost: a served SavedModel, and an evaluation spread over devices?

1. **Serving overhead.** Each model is exported with `manidefense.serving.export` (a
   `ModelShell` through its own `export`), reloaded in this process with
   `tf.saved_model.load`, and its `serve` endpoint is timed on one batch of 128 Fashion-MNIST
   test images (28×28×1; synthetic without the data) against the **floor**: the same Keras
   model called through a `tf.function` in this process, `model(x, training=False)`. Models:
   - `zoo.small_cnn()` alone (width 32, random weights, seed 0), also through the
     `serving_default` signature (what TF Serving calls): the pure per-call cost of the
     SavedModel path on a cheap model;
   - `layers.rbf_defense(cnn, rbf, beta2=1.75, num_samples=10)` with an `RBFLayer` fitted by
     `adapt` on Fashion-MNIST train images; its `serve_seeded(x, seed)` is timed too (ratio to
     `serve`: the cost of setting and restoring the noise streams);
   - `ModelShell(cnn, MCN(delta=0.1, num_steps=1))`. With MCN's default of 20 steps one call
     on 128 images runs 20 forward+backward passes on 10 × 128 tiled rows (≈40 s here at
     `attack_speed`'s cost per image and step); serving adds a per-call cost, so fewer steps
     make the ratio *more* sensitive to it, not less (`--mcn-steps 20` measures the default).
   The outputs are checked too: `serve` equals the floor for the deterministic models, and
   `serve_seeded` with one seed gives the same output twice (another seed, another output).
   Every variant is warmed up (traced) first, then all are timed in interleaved rounds (order
   rotated per round); a round times k consecutive calls of a variant (k such that the calls
   take ≈1 s, at most 10) and keeps their median; the table gives the median over rounds and
   the ratio to the floor paired within each round (median over rounds).
2. **Distributed evaluation.** `evaluate_robustness(model, x, y, [PGD-20], checks="none",
   batch_size=128, strategy=...)` (L∞, eps 0.1, step 0.01) on 512 Fashion-MNIST test images
   and `zoo.small_cnn(width=32)` (random weights, seed 0; labels = its own predictions, so
   every example is attacked). Each configuration runs in its own subprocess (devices and
   thread pools are fixed when TensorFlow starts):
   - one device (the floor) and `MirroredStrategy` over two logical CPUs, with TensorFlow's
     default thread pools;
   - the same two with `tf.config.threading.set_intra_op_parallelism_threads(1)` (one thread
     per op, what two devices that do not share their cores would give).
   Each batch's start and end are recorded (`tf.timestamp` around the batch function that
   `distribute.map_batches` hands the replicas): replica concurrency = busy replica-seconds ÷
   seconds with at least one replica busy, 2 when the two replicas always overlap, 1 when
   they take turns; unlike wall-clock ratios it does not depend on the machine's load.
   The subprocesses are started one after the other; each calls the attack under its
   strategy on 2 examples in batches of 1 (this traces every replica's graph) and waits; then the
   evaluations are timed in rounds, one subprocess at a time in rotated order. Per-example
   results (clean correct, robust, broken_by and the worst-case inputs) are compared with the
   floor's (the one-device run of the same thread setting).

Wall clock and process CPU time (`time.process_time`, all threads) are both recorded, and
/proc/stat tells how many cores other processes used meanwhile. Only ratios measured in one run
are comparable.

Usage:
    .venv/bin/python bench/production_speed.py          # ≈4.5 min idle; updates BENCHMARKS.md
    .venv/bin/python bench/production_speed.py --quick  # smoke test (< 60 s), no write
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense import distribute, serving  # noqa: E402
from manidefense._markdown import update_section  # noqa: E402
from manidefense.layers import RBFLayer, rbf_defense  # noqa: E402
from manidefense.shells import MCN, ModelShell  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import (  # noqa: E402
    HEADER,
    _busy_seconds,
    load_average,
    load_batch,
    machine_info,
)

SECTION = "production_speed"
ROOT = Path(__file__).resolve().parent.parent
EPS, STEP = 0.1, 0.01
SEED = 7  # the seed passed to serve_seeded
CALL_SECONDS = 1.0  # a round times consecutive calls of a variant for about this long
MAX_CALLS = 10
QUIET = 0.25  # a timing is "quiet" when other processes used less than this many cores
PROTOCOL = "@@production_speed "  # prefix of the worker's messages on its stdout
CONFIGS = {  # one subprocess each; "floor": the configuration it is compared with
    "single": dict(label="one device (floor)", replicas=1, threads=None, floor="single"),
    "mirrored": dict(label="MirroredStrategy, 2 logical CPUs", replicas=2, threads=None,
                     floor="single"),
    "single-1t": dict(label="one device, 1 intra-op thread (floor)", replicas=1, threads=1,
                      floor="single-1t"),
    "mirrored-1t": dict(label="MirroredStrategy, 2 logical CPUs, 1 intra-op thread",
                        replicas=2, threads=1, floor="single-1t"),
}


def clocked(fn):
    """`(wall s, CPU s of this process, cores other processes used)` of `fn()`."""
    busy = _busy_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    others = None if busy is None else max(_busy_seconds() - busy - cpu, 0.0) / wall
    return wall, cpu, others


def wait(out):
    """Blocks until a (nest of) tensor result exists."""
    for t in tf.nest.flatten(out):
        np.asarray(t)


def fmt_cores(others):
    return "n/a" if others is None else f"{others:.2f}"


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def mean_cores(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


# === 1. Serving ===

class Variant:
    """One endpoint of one model: `call()` returns its output; `floor` is the variant it is
    compared with (None for a floor)."""

    def __init__(self, model, label, call, floor=None):
        self.model, self.label, self.call, self.floor = model, label, call, floor
        self.calls = 1
        self.walls, self.cpus, self.others = [], [], []  # per round: per-call medians

    def median(self, cpu=False):
        return statistics.median(self.cpus if cpu else self.walls)


def train_images(limit):
    try:
        x, _ = md.datasets.load("fashion_mnist", "train", limit=limit)
    except (OSError, ValueError) as err:
        print(f"Fashion-MNIST unavailable ({type(err).__name__}); using synthetic data",
              file=sys.stderr)
        x, _ = md.datasets.load("synthetic", "train", limit=limit, num_examples=limit)
    return x


def build_serving(args, workdir):
    """Exports the three models, reloads them and returns (variants, info)."""
    keras.utils.set_random_seed(0)
    cnn = md.zoo.small_cnn()
    x, _, source = load_batch(args.batch_size)
    xt = tf.constant(x)
    info = {"source": source, "checks": {}}

    start = time.perf_counter()
    rbf = RBFLayer(em_steps=args.em_steps, birth_steps=max(1, args.em_steps // 2), seed=0)
    rbf.adapt(train_images(args.rbf_images))
    info["rbf"] = {"images": args.rbf_images, "em_steps": args.em_steps,
                   "filters": int(rbf.num_filters), "seconds": time.perf_counter() - start}
    defended = rbf_defense(cnn, rbf, beta2=1.75, num_samples=10, seed=0)
    shell = ModelShell(cnn, MCN(delta=EPS, num_steps=args.mcn_steps))
    shell(xt[:2])  # a subclassed model exports the shape it was called with

    seed = tf.constant(SEED, tf.int64)
    variants = []
    for key, model in (("cnn", cnn), ("rbf", defended), ("shell", shell)):
        path = os.path.join(workdir, key)
        start = time.perf_counter()
        if key == "shell":
            endpoints = model.export(path)
        else:
            endpoints = serving.export(model, path)
        served = tf.saved_model.load(path)
        info[f"export_{key}"] = {"endpoints": list(endpoints),
                                 "seconds": time.perf_counter() - start}
        compiled = tf.function(lambda z, m=model: m(z, training=False))
        floor = Variant(key, "floor: Keras model in a `tf.function`",
                        lambda f=compiled: f(xt))
        serve = Variant(key, "`serve` (reloaded SavedModel)", lambda s=served: s.serve(xt),
                        floor)
        variants += [floor, serve]
        if key == "cnn":
            signature = served.signatures["serving_default"]
            variants.append(Variant(key, "`serving_default` signature",
                                    lambda s=signature: s(xt), floor))
        if "serve_seeded" in endpoints:
            variants.append(Variant(key, "`serve_seeded(x, seed)`",
                                    lambda s=served: s.serve_seeded(xt, seed), serve))
        # Output checks (also the warm-up's first calls).
        if key != "rbf":
            diff = float(np.max(np.abs(np.asarray(compiled(xt)) - np.asarray(served.serve(xt)))))
            info["checks"][key] = f"max abs(serve − floor) = {diff:.1e}"
        else:
            a = np.asarray(served.serve_seeded(xt, seed))
            b = np.asarray(served.serve_seeded(xt, seed))
            c = np.asarray(served.serve_seeded(xt, tf.constant(SEED + 1, tf.int64)))
            info["checks"][key] = (f"serve_seeded twice with seed {SEED}: "
                                   f"{'equal' if np.array_equal(a, b) else 'DIFFERENT'}; "
                                   f"with seed {SEED + 1}: "
                                   f"{'different' if not np.array_equal(a, c) else 'EQUAL'}")
    return variants, info


def run_serving(args):
    with tempfile.TemporaryDirectory(dir=args.scratch) as workdir:  # the SavedModels
        variants, info = build_serving(args, workdir)
        for v in variants:
            wall, _, _ = clocked(lambda v=v: wait(v.call()))  # traces
            if wall < CALL_SECONDS:  # the first call may have been mostly tracing
                wall, _, _ = clocked(lambda v=v: wait(v.call()))
            v.calls = max(1, min(MAX_CALLS, round(CALL_SECONDS / max(wall, 1e-3))))
            if args.quick:
                v.calls = 1
            print(f"warm-up {v.model:<5} {v.label:<40} {wall * 1000:8.1f} ms, "
                  f"{v.calls} call(s) per round", file=sys.stderr)
        for r in range(args.rounds):
            shift = r % len(variants)
            for v in variants[shift:] + variants[:shift]:
                walls, cpus, others = zip(*(clocked(lambda v=v: wait(v.call()))
                                            for _ in range(v.calls)), strict=True)
                v.walls.append(statistics.median(walls))
                v.cpus.append(statistics.median(cpus))
                v.others.append(mean_cores(others))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{v.model}/{v.label.split(' ')[0]} {v.walls[-1] * 1000:.0f} ms"
                for v in variants), file=sys.stderr)
    return variants, info


def serving_rows(variants):
    rows = ["| model | endpoint | wall ms per call | CPU ms per call | × floor (wall, paired) "
            "| per round | × floor (CPU) | others (cores) |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for v in variants:
        if v.floor is None:
            ratio, per_round, cpu_ratio = "1.00", "", "1.00"
        else:
            paired = [a / b for a, b in zip(v.walls, v.floor.walls, strict=True)]
            ratio = f"**{statistics.median(paired):.3f}**"
            per_round = ", ".join(f"{p:.3f}" for p in paired)
            cpu_ratio = f"{v.median(cpu=True) / v.floor.median(cpu=True):.3f}"
        rows.append(f"| {MODEL_LABELS[v.model]} | {v.label} | {v.median() * 1000:.1f} | "
                    f"{v.median(cpu=True) * 1000:.1f} | {ratio} | {per_round} | {cpu_ratio} | "
                    f"{fmt_cores(mean_cores(v.others))} |")
    return rows


def serving_summary(variants):
    """One line: how far the endpoints are from their floors, against the rounds' spread."""
    rows = []
    for v in variants:
        if v.floor is not None:
            paired = [a / b for a, b in zip(v.walls, v.floor.walls, strict=True)]
            rows.append((statistics.median(paired), max(paired) - min(paired), v))
    if not rows:
        return ""
    worst, _, v = max(rows, key=lambda row: abs(row[0] - 1))
    spread = max(row[1] for row in rows)
    text = (f"Every served endpoint is within {abs(worst - 1):.1%} of its floor (largest: "
            f"{MODEL_LABELS[v.model]}, {v.label}, {worst:.3f}×; one endpoint's per-round ratios "
            f"spread over up to {spread:.1%})")
    if abs(worst - 1) <= 0.03:
        text += (": the reloaded SavedModel runs the same graph, and neither the signature "
                 "wrapper nor `serve_seeded`'s setting and restoring of the noise streams costs "
                 "anything measurable at this batch size.")
    else:
        text += "."
    return text


MODEL_LABELS = {"cnn": "`small_cnn()`", "rbf": "`rbf_defense`, 10 draws",
                "shell": "`ModelShell` + MCN"}


# === 2. Distributed evaluation (one subprocess per configuration) ===

BATCH_INTERVALS = []  # (start, end) of every replica batch since the last evaluation


def _record(start, end):
    BATCH_INTERVALS.append((float(start), float(end)))
    return 0


def recording(map_batches):
    """`map_batches` with the start and end of each replica's batch recorded (`tf.timestamp`
    around the batch function, which runs inside the replicas' graph), to tell whether the
    replicas ran at the same time."""

    def wrapped(strategy, fn, *args, **kwargs):
        def timed(replica, k, *tensors):
            start = tf.timestamp()
            with tf.control_dependencies([start]):
                tensors = [tf.identity(t) for t in tensors]
            out = fn(replica, k, *tensors)
            with tf.control_dependencies([out]):
                end = tf.timestamp()
            done = tf.py_function(_record, [start, end], tf.int32)
            with tf.control_dependencies([done]):
                return tf.identity(out)

        return map_batches(strategy, timed, *args, **kwargs)

    return wrapped


def concurrency(intervals):
    """Busy replica-seconds ÷ seconds during which at least one replica was busy: 1 when the
    replicas take turns, the number of replicas when they always overlap; None without any."""
    if not intervals:
        return None
    union, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        union += max(0.0, b - max(a, end))
        end = max(end, b)
    return sum(b - a for a, b in intervals) / union if union > 0 else None


def configure(name):
    """Sets devices and threads for configuration `name`; call before TensorFlow starts."""
    config = CONFIGS[name]
    if config["replicas"] > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config["replicas"])
    if config["threads"] is not None:
        tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    distribute.map_batches = recording(distribute.map_batches)
    if config["replicas"] == 1:
        return None
    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(config["replicas"])])


def send(message):
    print(PROTOCOL + json.dumps(message), flush=True)


def worker(args):
    """One configuration in a fresh process: set up and warm up, then one timed evaluation per
    `run` line read from stdin, until `quit` (then the per-example results go to args.out)."""
    strategy = configure(args.worker)
    tf.get_logger().setLevel("ERROR")  # MirroredStrategy warns on every eager `run`
    keras.utils.set_random_seed(0)
    model = md.zoo.small_cnn(width=32)
    x, _, source = load_batch(args.examples)
    y = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)  # all start correct
    attacks = [(f"PGD-{args.steps}", md.attacks.PGD(
        eps=EPS, step_size=STEP, num_steps=args.steps, batch_size=args.dist_batch, seed=1))]
    # Trace every replica's graph cheaply: two batches of one example (the graphs take any
    # batch size; the per-example check against the floor would show if this changed results).
    start = time.perf_counter()
    with distribute.distributed(strategy):
        for _, attack in attacks:
            attack.batch_size = 1
            attack(model, x[:2], y[:2])
            attack.batch_size = args.dist_batch
    send({"warmup": time.perf_counter() - start, "source": source,
          "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
          "devices": [d.name for d in tf.config.list_logical_devices("CPU")]})
    report = None
    for line in sys.stdin:
        if line.strip() != "run":
            break

        def evaluate():
            nonlocal report
            report = md.evaluation.evaluate_robustness(
                model, x, y, attacks, checks="none", batch_size=args.dist_batch,
                strategy=strategy)

        BATCH_INTERVALS.clear()
        timing = clocked(evaluate)
        send({"timing": timing, "replicas": int(report.meta["replicas"]),
              "robust_accuracy": float(np.mean(report.robust)),
              "concurrency": concurrency(BATCH_INTERVALS)})
    if report is not None:
        np.savez(args.out, clean=report.clean_correct, robust=report.robust,
                 broken_by=report.broken_by, x_adv=report.adversarial_examples)
    send({"done": True})


class Worker:
    """A configuration's subprocess, driven line by line."""

    def __init__(self, name, args):
        self.name, self.out = name, os.path.join(args.workdir, f"{name}.npz")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
                   "--out", self.out, "--examples", str(args.examples),
                   "--dist-batch", str(args.dist_batch), "--steps", str(args.steps)]
        start = time.perf_counter()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.info = self.receive()
        self.info["startup"] = time.perf_counter() - start
        self.timings, self.concurrency, self.arrays = [], [], None

    def receive(self):
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"worker {self.name} exited with code {self.process.wait()}")

    def run(self):
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        message = self.receive()
        self.timings.append(message["timing"])
        self.concurrency.append(message["concurrency"])
        self.info.update(replicas=message["replicas"],
                         robust_accuracy=message["robust_accuracy"])

    def finish(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.receive()
        self.process.wait()
        with np.load(self.out) as data:
            self.arrays = {k: data[k] for k in data.files}
        os.remove(self.out)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def median(self, index):
        return statistics.median(t[index] for t in self.timings)


def run_distributed(args):
    """Starts the workers one after another (each warms up alone), then times one evaluation
    per worker and round, in rotated order."""
    with tempfile.TemporaryDirectory(dir=args.scratch) as workdir:  # the workers' results
        args.workdir = workdir
        return _run_workers(args)


def _run_workers(args):
    workers = []
    try:
        for name in args.configs:
            workers.append(Worker(name, args))
            print(f"{name}: started and warmed up in {workers[-1].info['startup']:.0f} s "
                  f"(warm-up {workers[-1].info['warmup']:.1f} s)", file=sys.stderr)
        for r in range(args.dist_rounds):
            shift = r % len(workers)
            for w in workers[shift:] + workers[:shift]:
                w.run()
            print(f"round {r + 1}/{args.dist_rounds} (wall s/CPU s/others' cores): " + ", ".join(
                f"{w.name} {w.timings[-1][0]:.1f}/{w.timings[-1][1]:.1f}/"
                f"{fmt_cores(w.timings[-1][2])}" for w in workers), file=sys.stderr)
        for w in workers:
            w.finish()
    finally:
        for w in workers:
            w.kill()
    return {w.name: w for w in workers}


def same_results(a, b):
    """How per-example results of two runs compare: a short verdict."""
    keys = ("clean", "robust", "broken_by")
    flags = [k for k in keys if not np.array_equal(a[k], b[k])]
    diff = float(np.max(np.abs(a["x_adv"] - b["x_adv"])))
    verdict = "equal" if not flags and diff == 0 else (
        f"{', '.join(flags)} differ" if flags else "labels equal")
    return f"{verdict} (max abs Δx_adv {diff:.1e})"


def paired(results, name, floor):
    """`[(wall ratio, both quiet)]` of `name` to `floor`, round by round."""
    a, b = results.get(name), results.get(floor)
    if a is None or b is None:
        return []
    return [(x[0] / y[0], max(x[2] or 0.0, y[2] or 0.0) < QUIET)
            for x, y in zip(a.timings, b.timings, strict=True)]


def ratio_of(results, name, floor):
    """The decisive ratio: the median over the rounds in which both runs were quiet, or over
    all rounds when there is no such round; None when either was not run."""
    pairs = paired(results, name, floor)
    quiet = [r for r, q in pairs if q]
    return statistics.median(quiet or [r for r, _ in pairs]) if pairs else None


def all_quiet_missing(results, comparisons):
    """The comparisons (run ones only) that had no round in which both runs were quiet."""
    return [c for c in comparisons
            if paired(results, *c) and not any(q for _, q in paired(results, *c))]


def distributed_rows(results):
    rows = ["| configuration | replicas | intra-op threads | wall s | per round (others' cores) "
            "| × floor (wall) | × floor, quiet rounds | CPU s | cores used (CPU ÷ wall) "
            "| replica concurrency | per-example results vs the floor |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for name, w in results.items():
        config, floor = CONFIGS[name], results.get(CONFIGS[name]["floor"])
        if floor is w:
            ratio, quiet, same = "1.00", "1.00", "(floor)"
        elif floor is None:
            ratio, quiet, same = "–", "–", f"({CONFIGS[name]['floor']} not run)"
        else:
            pairs = paired(results, name, config["floor"])
            ratio = f"{statistics.median(r for r, _ in pairs):.2f}"
            quiet_ratios = [r for r, q in pairs if q]
            quiet = (f"**{statistics.median(quiet_ratios):.2f}** ({len(quiet_ratios)}/"
                     f"{len(pairs)})" if quiet_ratios else f"– (0/{len(pairs)})")
            if not quiet_ratios:
                ratio = f"**{ratio}**"
            same = same_results(w.arrays, floor.arrays)
        threads = w.info["intra_op"] or "default"
        rounds = ", ".join(f"{t[0]:.1f} ({fmt_cores(t[2])})" for t in w.timings)
        rows.append(
            f"| {config['label']} | {w.info['replicas']} | {threads} | {w.median(0):.1f} | "
            f"{rounds} | {ratio} | {quiet} | {w.median(1):.1f} | "
            f"{w.median(1) / w.median(0):.2f} | {fmt_cores(mean_cores(w.concurrency))} | "
            f"{same} |")
    return rows


def cores(results, name):
    w = results[name]
    return w.median(1) / w.median(0)


def overlap(results, name):
    return fmt_cores(mean_cores(results[name].concurrency))


def distributed_summary(results):
    """3–5 lines that explain the distributed numbers (each only when its rows were run)."""
    r = {name: ratio_of(results, name, CONFIGS[name]["floor"]) for name in results}
    lines = []
    others = mean_cores(t[2] for w in results.values() for t in w.timings)
    ncpu = os.cpu_count() or 1
    missing = all_quiet_missing(results, [("mirrored", "single"),
                                          ("mirrored-1t", "single-1t")])
    if missing:
        lines.append(
            f"- Other processes used {others:.2f} of the {ncpu} cores on average during these "
            f"runs, and {', '.join(f'{a} vs {b}' for a, b in missing)} had no round in which "
            "both runs were quiet: those wall-clock ratios mix in the load (the replica "
            "concurrency, measured from each batch's start and end, does not depend on it).")
    else:
        lines.append(
            "- Ratios below are medians over the rounds in which both runs were quiet (other "
            f"processes < {QUIET} cores); other processes used {others:.2f} cores on average.")
    if "mirrored" in r:
        ratio = r["mirrored"]
        cpu, cpu_one = results["mirrored"].median(1), results["single"].median(1)
        text = (f"- `strategy=MirroredStrategy` over 2 logical CPUs takes {ratio:.2f}× the "
                f"one-device time, with replica concurrency {overlap(results, 'mirrored')} (2 = "
                "the two replicas always overlapped, 1 = they took turns) and "
                f"{cpu:.1f} CPU s against {cpu_one:.1f} for one device. Logical CPU devices "
                f"share the process's intra-op thread pool and the machine's {ncpu} cores, so a "
                "second replica brings no compute of its own")
        if ratio < 0.95:
            text += ("; the gain comes from splitting the work by batch, which costs less CPU "
                     "than splitting every op over the intra-op pool")
            if "single-1t" in results:
                text += (f" (one device with one thread does the same work in "
                         f"{results['single-1t'].median(1):.1f} CPU s)")
            text += "."
        elif ratio > 1.05:
            text += ("; the rest is the distributed step's own cost (traced on every attack "
                     "call) and `strategy.gather`.")
        else:
            text += "."
        lines.append(text)
    if "single-1t" in results and "single" in results:
        text = (f"- With one intra-op thread per op, one device takes "
                f"{ratio_of(results, 'single-1t', 'single'):.2f}× the default one-device time "
                f"({cores(results, 'single-1t'):.2f} cores used)")
        if "mirrored-1t" in r:
            text += (f" and MirroredStrategy {r['mirrored-1t']:.2f}× that (concurrency "
                     f"{overlap(results, 'mirrored-1t')}, "
                     f"{cores(results, 'mirrored-1t'):.2f} cores used; "
                     f"{ratio_of(results, 'mirrored-1t', 'single'):.2f}× the default "
                     "one-device time): the ratio to expect from two devices that each bring "
                     "their own compute (GPUs, machines)")
        lines.append(text + ".")
    if "mirrored" in r and r["mirrored"] < 0.95:
        verdict = (f"On one CPU machine, `strategy=` over logical devices gained "
                   f"{1 / r['mirrored']:.2f}× here by using the same cores more efficiently")
    else:
        verdict = ("On one CPU machine `strategy=None` is the configuration to use (its ops "
                   "already use the cores)")
    lines.append(
        f"- {verdict}; a speed-up that grows with the replicas needs devices that each bring "
        "their own compute (several accelerators or workers; see the one-thread rows). "
        "Per-example results equal the floor's (last column): a "
        "batch's random numbers depend on the seed and the batch index only.")
    return lines


# === Report ===

def section(args, variants, info, results, elapsed, load):
    today = datetime.date.today().isoformat()
    others = mean_cores([o for v in variants for o in v.others]
                        + [t[2] for r in results.values() for t in r.timings])
    rbf = info["rbf"]
    first = next(iter(results.values()), None)
    lines = [
        f"## {SECTION}",
        "",
        f"Measured {today} by `bench/production_speed.py`; this section is rewritten on every "
        "full run. Only ratios measured in one run are comparable.",
        "",
        f"- Machine: {machine_info()}; load average {load[0]} at the start, {load[1]} at the "
        f"end; other processes used {fmt_cores(others)} cores on average during the timed "
        f"runs; total {elapsed / 60:.1f} min (serving {info['parts'][0] / 60:.1f}, distributed "
        f"{info['parts'][1] / 60:.1f}).",
        "",
    ]
    if variants:
        lines += [
            "**Serving** (`manidefense.serving.export`, reloaded with `tf.saved_model.load` in the "
            f"same process) on {info['source']}, batch {args.batch_size}: `zoo.small_cnn()` "
            f"(width 32, random weights, seed 0); `rbf_defense(cnn, rbf, beta2=1.75, "
            f"num_samples=10)` with an `RBFLayer` fitted by `adapt` on {rbf['images']} "
            f"Fashion-MNIST train images ({rbf['em_steps']} M-steps, {rbf['filters']} filters); "
            f"`ModelShell(cnn, MCN(delta=0.1, num_steps={args.mcn_steps}))`"
            + (" (fewer steps than MCN's default 20 keep a call short, and a per-call overhead "
               "weighs more against fewer steps). " if args.mcn_steps < 20 else ". ") +
            f"Warm-up calls first, then {plural(args.rounds, 'interleaved round')}; a round keeps "
            "the median "
            "of ≈1 s of consecutive calls (at most 10) per variant. × floor = the variant's time "
            "÷ its floor's, paired within each round, median over rounds; the floor of "
            "`serve_seeded` is `serve`.",
            "",
            *serving_rows(variants),
            "",
            serving_summary(variants),
            "",
            "Output checks: " + "; ".join(f"{MODEL_LABELS[k]}: {v}"
                                          for k, v in info["checks"].items()) + ". "
            "Export (`export` + `tf.saved_model.load`): " + ", ".join(
                f"{MODEL_LABELS[k]} {info['export_' + k]['seconds']:.1f} s"
                for k in MODEL_LABELS) + ".",
            "",
        ]
    if results:
        lines += [
            f"**Distributed evaluation**: `evaluate_robustness(small_cnn(width=32), x, y, "
            f"[PGD-{args.steps}], checks=\"none\", batch_size={args.dist_batch}, "
            f"strategy=...)`, L∞ eps {EPS}, step {STEP}, on {first.info['source']} (labels = "
            f"the model's predictions, so every example is attacked; robust accuracy "
            f"{first.info['robust_accuracy']:.0%}). One subprocess per configuration, started "
            "one after the other; each first calls the attack under its strategy on 2 "
            "examples in batches of 1 (traces every replica's graph), then the "
            f"evaluations are timed in {plural(args.dist_rounds, 'round')}, one per "
            "configuration in "
            "rotated order (only one runs at a time). × floor = wall time ÷ the floor's in the "
            f"same round, median; *quiet* rounds are those in which other processes used "
            f"less than {QUIET} cores during both runs (from /proc/stat; n/m = quiet rounds of "
            "all). CPU s = the subprocess's CPU time (all threads). Replica "
            "concurrency = busy replica-seconds ÷ seconds with at least one replica busy "
            "(each batch's start and end recorded around the batch function that "
            "`distribute.map_batches` receives): 1 when the replicas take turns, 2 when they "
            "always overlap.",
            "",
            *distributed_rows(results),
            "",
            *distributed_summary(results),
            "",
        ]
    return "\n".join(lines)


def write_section(path, text):
    """Replaces the `## production_speed` part of `path` (or appends it), keeping the others."""
    update_section(path, SECTION, text, HEADER)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (< 60 s): small batches, 1 round, 2 configurations; "
                             "implies --no-write")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="serving batch (default 128)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved serving rounds (default 4)")
    parser.add_argument("--mcn-steps", type=int, default=None,
                        help="MCN steps of the served shell (default 1)")
    parser.add_argument("--rbf-images", type=int, default=None,
                        help="Fashion-MNIST train images the RBFLayer is fitted on (default "
                             "60000: one pass)")
    parser.add_argument("--em-steps", type=int, default=None, help="RBFLayer M-steps "
                        "(default 80)")
    parser.add_argument("--examples", type=int, default=None,
                        help="examples of the distributed evaluation (default 512)")
    parser.add_argument("--dist-batch", type=int, default=None,
                        help="evaluation batch size (default 128)")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps (default 20)")
    parser.add_argument("--dist-rounds", type=int, default=None,
                        help="timed evaluations per configuration, in rotated order "
                             "(default 2)")
    parser.add_argument("--configs", type=lambda s: [c for c in s.split(",") if c],
                        default=None, help=f"subset of {','.join(CONFIGS)} (default all; "
                        "--quick: single,mirrored)")
    parser.add_argument("--skip", choices=("serving", "distributed"), default=None,
                        help="leave one part out; implies --no-write")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="markdown file whose `## production_speed` section is replaced")
    parser.add_argument("--scratch", default=None,
                        help="directory for temporary files (default: the system's)")
    parser.add_argument("--no-write", action="store_true", help="only print the section")
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(batch_size=(16, 128), rounds=(1, 4), mcn_steps=(1, 1),
                    rbf_images=(1500, 60000), em_steps=(2, 80), examples=(48, 512),
                    dist_batch=(16, 128), steps=(2, 20), dist_rounds=(1, 2))
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.configs is None:
        args.configs = ["single", "mirrored"] if quick else list(CONFIGS)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    if min(args.batch_size, args.rounds, args.mcn_steps, args.rbf_images, args.em_steps,
           args.examples, args.dist_batch, args.steps, args.dist_rounds) < 1:
        parser.error("sizes, rounds and steps must be positive")
    args.no_write = (args.no_write or quick or args.skip is not None
                     or args.configs != list(CONFIGS))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    load_start, t0 = load_average(), time.perf_counter()
    variants, info, results = [], {"rbf": {}, "checks": {}, "source": ""}, {}
    if args.skip != "serving":
        variants, info = run_serving(args)
        print(f"serving part: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t1 = time.perf_counter()
    if args.skip != "distributed":
        results = run_distributed(args)
        print(f"distributed part: {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    info["parts"] = (t1 - t0, time.perf_counter() - t1)
    text = section(args, variants, info, results, elapsed, (load_start, load_average()))
    print()
    print(text)
    if not args.no_write:
        write_section(args.output, text)
        print(f"wrote the `## {SECTION}` section of {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
