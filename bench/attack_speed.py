"""How close is manidefense's PGD to the cost of the gradients it needs?

A K-step PGD attack must pay for at least K forward+backward passes of the model with respect
to its input; everything else (random start, sign steps, projections, keeping the best iterate,
the final verification forward, Python dispatch) is overhead. This benchmark measures that
*floor* and the library's attack on the reference CNN (`manidefense.zoo.small_cnn`, width 32,
28x28x1 inputs, batch 256) and reports every variant as a ratio to the floor:

- floor, 20 separate calls: one compiled (`tf.function`, no XLA) forward+backward pass
  w.r.t. the input (CE of the logits, `training=False`), timed call by call; 20 x its median.
- floor, one 20-step loop: the same 20 passes inside one `tf.function` (`ops.fori_loop`).
  The floor is the faster of the two (which one wins changes from run to run on this machine).
- PGD-Linf-20, eager: a plain Python loop of 20 eager `GradientTape` steps, written here as a
  baseline (the library has no eager mode), to show what eager execution costs.
- PGD-Linf-20, graph: `manidefense.attacks.PGD(..., jit_compile=False)`, the CPU default.
- PGD-Linf-20, XLA: the same with `jit_compile=True`.
- PGD-L2-20 and PGD-L1-20, graph: the same attack with norm work added (L2 normalisation;
  L1's argsort-based box-aware step and sort-based projection).
- profile rows: `manidefense.attacks.pgd.pgd_loop` compiled directly (no `Attack.__call__`
  checks, no final projection/verification forward), and a minimal loop without random
  start and keep-best; plus one forward pass, to price the ~2 extra forwards of PGD.

Why ratios: the machine is shared (2 cores, tests may run at the same time) and absolute
times drift by 50% or more between runs. Every variant is warmed up first (tracing and XLA
compilation are not timed), then the variants are timed in interleaved rounds (the order
rotates each round) so that background load hits all of them alike, and the median per
variant is kept. Only ratios measured in the same run are meaningful; never compare absolute
seconds across runs. Each timing also records the CPU time of this process (all threads) and,
from /proc/stat, how many cores other processes used meanwhile. When other processes take a
core, a wall-clock timing doubles while the CPU time barely moves, so the verdict compares
quiet timings (others used < 0.25 cores) when the floor and the graph attack both have one,
and CPU times otherwise.

The model uses random weights (`keras.utils.set_random_seed(0)`): PGD has no early exit, so
its cost does not depend on the weights or on how many points are already misclassified.

Usage:
    .venv/bin/python bench/attack_speed.py            # ~4.5 min idle; updates BENCHMARKS.md
    .venv/bin/python bench/attack_speed.py --quick    # smoke test, does not write BENCHMARKS.md
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
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense._markdown import update_section  # noqa: E402
from manidefense.attacks import norms  # noqa: E402
from manidefense.attacks.gradients import logits_function  # noqa: E402
from manidefense.attacks.objectives import objective  # noqa: E402
from manidefense.attacks.pgd import pgd_loop  # noqa: E402

SECTION = "attack_speed"
ROOT = Path(__file__).resolve().parent.parent
NUM_STEPS = 20
EPS = {"linf": 0.1, "l2": 1.5, "l1": 10.0}
STEP = {"linf": 0.01, "l2": 2.5 * 1.5 / NUM_STEPS, "l1": 2.5 * 10.0 / NUM_STEPS}
TARGET_RATIO = 1.1
QUIET = 0.25  # a timing is "quiet" when other processes used less than this many cores
REQUIRED = {"floor_calls", "floor_loop", "graph"}  # the floor and the library's default
KEYS = ("floor_calls", "floor_loop", "eager", "graph", "xla", "l2", "l1", "loop_direct",
        "loop_minimal", "forward")


def load_batch(batch_size):
    """The first `batch_size` Fashion-MNIST test images, or synthetic ones without the data."""
    try:
        x, y = md.datasets.load("fashion_mnist", "test", limit=batch_size)
        source = "Fashion-MNIST test"
    except (OSError, ValueError) as err:  # not installed and not downloadable
        print(f"Fashion-MNIST unavailable ({type(err).__name__}); using synthetic data",
              file=sys.stderr)
        x, y = md.datasets.load("synthetic", "test", limit=batch_size, shape=(28, 28, 1),
                                num_examples=max(batch_size, 1000))
        source = "synthetic"
    return x, y, f"{source}[:{len(x)}]"


def timed(fn, *args):
    """`(wall seconds, CPU seconds of this process)` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    if hasattr(out, "numpy"):
        out.numpy()  # make sure the result exists before the clock stops
    return time.perf_counter() - wall, time.process_time() - cpu


def median_pair(pairs, scale=1.0):
    """Medians of the wall and CPU times of several calls, times `scale`."""
    pairs = list(pairs)
    return (scale * statistics.median(p[0] for p in pairs),
            scale * statistics.median(p[1] for p in pairs))


class Variant:
    """A measured quantity: `warmup()` once untimed, then `measure()` -> (wall, CPU) seconds."""

    def __init__(self, key, label, warmup, measure, group="main"):
        self.key, self.label, self.group = key, label, group
        self.warmup, self.measure = warmup, measure
        self.times, self.cpu_times, self.others = [], [], []

    def median(self, cpu=False):
        return statistics.median(self.cpu_times if cpu else self.times)

    def quiet_times(self):
        return [t for t, o in zip(self.times, self.others, strict=True) if o is None or o < QUIET]

    def quiet_median(self):
        quiet = self.quiet_times()
        return statistics.median(quiet) if quiet else None


def build_variants(model, x, y, floor_calls):
    xt, yt = tf.constant(x), tf.constant(y)
    logits_fn = logits_function(model)

    def fwd_bwd(xk):
        with tf.GradientTape() as tape:
            tape.watch(xk)
            total = ops.sum(objective("ce", logits_fn(xk), yt))
        return tape.gradient(total, xk)

    floor_call = tf.function(fwd_bwd, jit_compile=False)

    def loop(xk, n):
        # x moves a little each step so that no pass is loop-invariant; the update is free.
        return ops.fori_loop(0, n, lambda i, z: z + 1e-3 * fwd_bwd(z), xk)

    floor_loop = tf.function(loop, jit_compile=False)
    forward = tf.function(lambda xk: logits_fn(xk), jit_compile=False)
    n_steps = tf.constant(NUM_STEPS)
    one_step = tf.constant(1)  # the loops take the step count as a tensor: warm up with one

    def floor_separate():
        return median_pair((timed(floor_call, xt) for _ in range(floor_calls)), NUM_STEPS)

    def forward_only():
        return median_pair(timed(forward, xt) for _ in range(floor_calls))

    def eager_pgd(num_steps):
        eps, step = EPS["linf"], STEP["linf"]
        xk = norms.clip_to_bounds(
            xt + keras.random.uniform(xt.shape, -eps, eps, seed=0), (0.0, 1.0))
        for _ in range(num_steps):
            xk = xk + step * ops.sign(fwd_bwd(xk))
            xk = norms.clip_to_bounds(xt + norms.project(xk - xt, eps, "linf"), (0.0, 1.0))
        return xk

    def library(norm, jit_compile):
        attack = md.attacks.PGD(eps=EPS[norm], norm=norm, step_size=STEP[norm],
                                num_steps=NUM_STEPS, random_start=True, batch_size=len(x),
                                seed=0, jit_compile=jit_compile)
        return lambda: attack(model, x, y)

    def direct_loop(**kwargs):
        fn = tf.function(
            lambda xb, yb, n: pgd_loop(logits_fn, xb, yb, eps=EPS["linf"], norm="linf",
                                       step_size=STEP["linf"], num_steps=n, seed=0, **kwargs)[0],
            jit_compile=False)
        return fn

    graph, xla = library("linf", False), library("linf", True)
    l2, l1 = library("l2", False), library("l1", False)
    full, minimal = direct_loop(), direct_loop(random_start=False, keep_best=False)
    return [
        Variant("floor_calls", f"floor: {NUM_STEPS} x one compiled fwd+bwd call",
                lambda: floor_call(xt), floor_separate, "floor"),
        Variant("floor_loop", f"floor: {NUM_STEPS} fwd+bwd in one compiled loop",
                lambda: floor_loop(xt, one_step), lambda: timed(floor_loop, xt, n_steps),
                "floor"),
        Variant("eager", "PGD-Linf-20, eager (Python loop, baseline)",
                lambda: eager_pgd(1), lambda: timed(eager_pgd, NUM_STEPS)),
        Variant("graph", "PGD-Linf-20, graph (library default on CPU)", graph,
                lambda: timed(graph)),
        Variant("xla", "PGD-Linf-20, XLA (jit_compile=True)", xla, lambda: timed(xla)),
        Variant("l2", "PGD-L2-20, graph", l2, lambda: timed(l2)),
        Variant("l1", "PGD-L1-20, graph", l1, lambda: timed(l1)),
        Variant("loop_direct", "profile: pgd_loop alone (no __call__, no verification)",
                lambda: full(xt, yt, one_step), lambda: timed(full, xt, yt, n_steps),
                "profile"),
        Variant("loop_minimal", "profile: pgd_loop, no random start, no keep-best",
                lambda: minimal(xt, yt, one_step), lambda: timed(minimal, xt, yt, n_steps),
                "profile"),
        Variant("forward", "profile: ONE compiled forward pass (not 20)", lambda: forward(xt),
                forward_only, "profile"),
    ]


def machine_info():
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()}, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def _busy_seconds():
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy;
    # steal (another VM took this vCPU) counts as load from others too.
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def measure(v):
    """Times one round of variant `v`: (wall, own CPU, cores used by other processes)."""
    busy = _busy_seconds()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    wall, cpu = v.measure()
    total_wall, total_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    others = None
    if busy is not None:
        others = max(_busy_seconds() - busy - total_cpu, 0.0) / total_wall
    return wall, cpu, others


def load_average():
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run(args):
    keras.utils.set_random_seed(0)
    model = md.zoo.small_cnn(input_shape=(28, 28, 1), num_classes=10, width=32)
    x, y, source = load_batch(args.batch_size)
    variants = build_variants(model, x, y, args.floor_calls)
    if args.only:
        keep = set(args.only) | REQUIRED
        variants = [v for v in variants if v.key in keep]
    elif not args.profile:
        variants = [v for v in variants if v.group != "profile"]
    load_start = load_average()
    t0 = time.perf_counter()
    for v in variants:
        start = time.perf_counter()
        v.warmup()
        print(f"warm-up {v.key:<13} {time.perf_counter() - start:7.1f} s", file=sys.stderr)
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            wall, cpu, others = measure(v)
            v.times.append(wall)
            v.cpu_times.append(cpu)
            v.others.append(others)
        print(f"round {r + 1}/{args.repeats} (wall s/CPU s/others' cores): " + ", ".join(
            f"{v.key} {v.times[-1]:.2f}/{v.cpu_times[-1]:.2f}/{fmt_cores(v.others[-1])}"
            for v in variants), file=sys.stderr)
    elapsed = time.perf_counter() - t0
    by_key = {v.key: v for v in variants}
    floors = (by_key["floor_calls"], by_key["floor_loop"])
    floor = min(v.median() for v in floors)
    cpu_floor = min(v.median(cpu=True) for v in floors)
    quiet_floors = [q for q in (v.quiet_median() for v in floors) if q is not None]
    quiet_floor = min(quiet_floors) if quiet_floors else None
    # Paired per-round ratio of the library's default: both measured in the same round.
    paired = [g / min(a, b) for g, a, b in zip(by_key["graph"].times, floors[0].times,
                                              floors[1].times, strict=True)]
    others = [o for v in variants for o in v.others if o is not None]
    return dict(variants=variants, floor=floor, cpu_floor=cpu_floor, quiet_floor=quiet_floor,
                paired=paired, source=source, elapsed=elapsed,
                load=(load_start, load_average()),
                others=statistics.mean(others) if others else None)


def fmt_cores(others):
    return "n/a" if others is None else f"{others:.2f}"


def table(result):
    floor, cpu_floor, quiet_floor = result["floor"], result["cpu_floor"], result["quiet_floor"]
    rows = ["| variant | median s | min–max s | × floor | quiet runs | quiet × floor | CPU s "
            "| × CPU floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in result["variants"]:
        med, cpu, quiet = v.median(), v.median(cpu=True), v.quiet_median()
        quiet_ratio = "–" if quiet is None or quiet_floor is None else f"{quiet / quiet_floor:.2f}"
        rows.append(f"| {v.label} | {med:.2f} | {min(v.times):.2f}–{max(v.times):.2f} "
                    f"| {med / floor:.2f} | {len(v.quiet_times())}/{len(v.times)} "
                    f"| {quiet_ratio} | {cpu:.2f} | {cpu / cpu_floor:.2f} |")
    return "\n".join(rows)


def ratios(result):
    """(basis, {key: ratio}): quiet wall clock when the floor and graph both had quiet runs,
    else CPU time, which other processes barely disturb (unlike wall clock)."""
    by_key = {v.key: v for v in result["variants"]}
    if result["quiet_floor"] is not None and by_key["graph"].quiet_median() is not None:
        return "quiet wall clock", {
            v.key: v.quiet_median() / result["quiet_floor"]
            for v in result["variants"] if v.quiet_median() is not None}
    return "CPU time", {v.key: v.median(cpu=True) / result["cpu_floor"]
                        for v in result["variants"]}


def interpretation(result):
    wall = {v.key: v.median() / result["floor"] for v in result["variants"]}
    basis, r = ratios(result)
    verdict = "meets" if r["graph"] <= TARGET_RATIO else "misses"
    text = (f"In {basis} (the decisive measure for this run), PGD-Linf-20 in graph "
            f"mode costs {r['graph']:.3f}× its floor (median over all wall-clock runs: "
            f"{wall['graph']:.2f}×) and {verdict} the ≤{TARGET_RATIO}× target (peers measured "
            f"earlier on this machine: CleverHans 4 ≈1.0×, Foolbox ≈2.1×, ART ≈2.5×)")
    if "eager" in r and "xla" in r:
        text += (f"; an eager Python loop costs {r['eager']:.2f}× and XLA {r['xla']:.2f}× on "
                 f"this CPU")
    if "l2" in r and "l1" in r:
        text += (f", and the L2/L1 norm work brings the graph attack to {r['l2']:.2f}×/"
                 f"{r['l1']:.2f}×")
    return text + "."


def section(args, result):
    paired = result["paired"]
    today = datetime.date.today().isoformat()
    command = " ".join(["bench/attack_speed.py", *sys.argv[1:]])
    lines = [
        f"## {SECTION}",
        "",
        f"Measured {today} by `{command}` (`make bench` runs it without options); this section "
        "is rewritten on every full run. Only ratios measured in one run are comparable: "
        "absolute seconds depend on the load of the shared machine.",
        "",
        f"- Machine: {machine_info()}; load average (1/5/15 min) {result['load'][0]} at the "
        f"start, {result['load'][1]} at the end; other processes used "
        f"{fmt_cores(result['others'])} cores on average during the timed runs.",
        f"- Settings: `zoo.small_cnn()` (width 32, random weights, seed 0), {result['source']}, "
        f"batch {args.batch_size}, {NUM_STEPS} steps, random start; L∞ eps {EPS['linf']} "
        f"step {STEP['linf']}; L2 eps {EPS['l2']} step {STEP['l2']:.4g}; L1 eps {EPS['l1']} "
        f"step {STEP['l1']:.4g}. Warm-up call first, then {args.repeats} interleaved rounds "
        f"(order rotated per round), median per variant; the separate-call floor is "
        f"{NUM_STEPS} × the median of {args.floor_calls} calls per round.",
        f"- Floor = the faster of the two floor rows: {result['floor']:.2f} s wall "
        f"({result['floor'] / NUM_STEPS * 1000 / args.batch_size:.2f} ms per image and step), "
        f"{result['cpu_floor']:.2f} s CPU. A run is *quiet* when other processes used less "
        f"than {QUIET} cores meanwhile (from /proc/stat); quiet × floor compares quiet runs "
        "only. CPU s is this process's CPU time (all threads): other processes barely change "
        "it, so it decides when the floor or the graph attack had no quiet run, but it "
        "under-counts variants that leave a core idle.",
        f"- PGD-Linf-20 graph / floor in wall clock, paired within each round: "
        f"{', '.join(f'{p:.2f}' for p in paired)}.",
        f"- Total time of the run (warm-up included): {result['elapsed'] / 60:.1f} min.",
        "",
        table(result),
        "",
        interpretation(result),
        "",
    ]
    return "\n".join(lines)


HEADER = """# Benchmarks

Each `## name` section below is written by `bench/name.py` and replaced (only that section) when
the script is re-run. The machines are shared and noisy: compare ratios measured within one run,
never absolute times across runs or sections.

"""


def write_section(path, text, section=SECTION):
    """Replaces the `## section` part of `path` (or appends it), keeping the others."""
    update_section(path, section, text, HEADER)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: batch 32, 1 round, 2 floor calls; implies --no-write")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 256)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved timing rounds (default 3)")
    parser.add_argument("--floor-calls", type=int, default=None,
                        help="separate fwd+bwd calls timed per round (default 5)")
    parser.add_argument("--profile", action="store_true",
                        help="add the profile rows (pgd_loop alone, minimal loop, one forward); "
                             "about a quarter more time")
    parser.add_argument("--only", type=lambda s: [k for k in s.split(",") if k], default=None,
                        help=f"comma-separated subset of {','.join(KEYS)} (the floors and "
                             "graph are always run); implies --no-write")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="markdown file whose `## attack_speed` section is replaced")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    quick = args.quick
    args.batch_size = args.batch_size or (32 if quick else 256)
    args.repeats = args.repeats or (1 if quick else 3)
    args.floor_calls = args.floor_calls or (2 if quick else 5)
    args.no_write = args.no_write or quick or bool(args.only)
    unknown = set(args.only or ()) - set(KEYS)
    if unknown:
        parser.error(f"unknown --only keys {sorted(unknown)}; choose from {', '.join(KEYS)}")
    if min(args.batch_size, args.repeats, args.floor_calls) < 1:
        parser.error("--batch-size, --repeats and --floor-calls must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print()
    print(table(result))
    print()
    print(interpretation(result))
    paired = result["paired"]
    print(f"paired graph/floor per round (wall): {', '.join(f'{p:.2f}' for p in paired)}; "
          f"others used {fmt_cores(result['others'])} cores; total "
          f"{result['elapsed'] / 60:.1f} min")
    if not args.no_write:
        write_section(args.output, section(args, result))
        print(f"wrote section '## {SECTION}' of {args.output}")


if __name__ == "__main__":
    main()
