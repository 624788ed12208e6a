"""How close are the unforeseen attacks to the cost of the gradients and renderings they need?

Each unforeseen attack optimises hidden variables `z` (fog displacements, snow intensities,
Gabor impulses, a flow field, DCT coefficients) through its own image synthesis: a K-step attack
must pay for K renderings `render(x, z)`, K model forward passes and K backward passes through
both to `z`. On the reference CNN (`manidefense.zoo.small_cnn((28, 28, 1), 10, width=32)`,
random weights, seed 0), batch 256, K = 20 steps, each attack is timed as a user calls it,
`attack(model, x, y)`, against its floor measured in the same run:

- **floor** (one per attack): one `tf.function` (no XLA) that draws the attack's per-batch
  constants (`attack._setup`) and runs K × (`attack._render(x, z)` + model forward + backward
  to `z`) in an `ops.fori_loop`, each followed by a plain sign step: no projection, no
  constraint, no penalty, no keep-best, no final verification;
- **image-only floor** (shared): K × model forward+backward w.r.t. the image in the same kind
  of loop, so that `floor / image-only floor` shows what the synthesis itself costs;
- **Spatial** (no gradients): the grid search (31 angles × 5 × 5 shifts = 775 transforms)
  against a floor of 775 × (rotate-translate + model forward) in one compiled loop, and the
  random search (10 draws) against 10 × (draw + transform + forward). The grid costs 775
  forwards per batch (≈13× a 20-step gradient attack on the same images), so it is timed on
  the first 32 images (`--spatial-batch`) to keep the run under 10 minutes; its ratio hardly
  depends on the batch (one loop, one keep-best `where` per transform).

`--profile` adds, per attack, `attack._attack_batch` compiled alone (no `Attack.__call__`
checks, probe, numpy copies or verification forward) and the floor plus the attack's own
projection, constraint and penalty (`pgd_loop` without keep-best), and one model forward, to
split an attack's overhead into the loop's extras and the call's. A last line gives
`corrupt()`'s throughput per kind (images per second), as a user calls it (a new attack object
per call, so its graph is traced every time) and with a reused `corruption(...)` object.

Timing conventions as `bench/attack_speed.py`: every variant is warmed up (traced) first, then
all are timed in interleaved rounds (order rotated per round), median per variant. Wall clock
and this process's CPU time (`time.process_time`, all threads) are both recorded, and
/proc/stat tells how many cores other processes used meanwhile. The verdict uses CPU time,
which other processes on this shared 2-core machine barely disturb. Only ratios measured in
one run are comparable.

Usage:
    .venv/bin/python bench/unforeseen_speed.py            # ≈9 min idle; updates BENCHMARKS.md
    .venv/bin/python bench/unforeseen_speed.py --profile --attacks jpeg-l1,stadv
                                                          # + profile rows; no write
    .venv/bin/python bench/unforeseen_speed.py --quick    # smoke test (< 1 min), no write
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
from manidefense._markdown import update_section  # noqa: E402
from manidefense.attacks import unforeseen  # noqa: E402
from manidefense.attacks.gradients import logits_function  # noqa: E402
from manidefense.attacks.objectives import objective  # noqa: E402
from manidefense.attacks.pgd import pgd_loop  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import (  # noqa: E402
    HEADER,
    _busy_seconds,
    load_average,
    load_batch,
    machine_info,
)

SECTION = "unforeseen_speed"
ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.3
QUIET = 0.25  # a timing is "quiet" when other processes used less than this many cores

# The attacks and their settings (medium strengths for 28×28 images; the cost does not depend
# on eps). Names are the threat models of the UAR tables.
GRADIENT_ATTACKS = {
    "fog": ("Fog(eps=1.0)", lambda **kw: unforeseen.Fog(eps=1.0, **kw)),
    "snow": ("Snow(eps=0.5)", lambda **kw: unforeseen.Snow(eps=0.5, **kw)),
    "gabor": ("Gabor(eps=0.2)", lambda **kw: unforeseen.Gabor(eps=0.2, **kw)),
    "elastic": ("Elastic(eps=1.0)", lambda **kw: unforeseen.Elastic(eps=1.0, **kw)),
    "jpeg-linf": ("JPEG(eps=0.25, norm='linf')",
                  lambda **kw: unforeseen.JPEG(eps=0.25, norm="linf", **kw)),
    "jpeg-l1": ("JPEG(eps=64, norm='l1'), Frank–Wolfe",
                lambda **kw: unforeseen.JPEG(eps=64.0, norm="l1", **kw)),
    "stadv": ("StAdv(eps=1.0, tau=0.05), margin loss",
              lambda **kw: unforeseen.StAdv(eps=1.0, **kw)),
}
SPATIAL = {
    "spatial-grid": lambda quick, **kw: unforeseen.Spatial(
        search="grid", num_angles=3 if quick else 31, **kw),
    "spatial-random": lambda quick, **kw: unforeseen.Spatial(search="random", num_samples=10,
                                                             **kw),
}


class Variant:
    """A timed quantity: `warmup()` once (traces), then `run()` per round -> wall, CPU s."""

    def __init__(self, attack, key, label, warmup, run):
        self.attack, self.key, self.label, self.warmup, self.run = attack, key, label, warmup, run
        self.walls, self.cpus, self.others, self.first = [], [], [], None

    def median(self, cpu=False):
        return statistics.median(self.cpus if cpu else self.walls)


def wait(out):
    """Blocks until a (nest of) tensor result exists."""
    for t in tf.nest.flatten(out):
        np.asarray(t)


# === Floors ===

def sign_floor(attack, logits_fn):
    """`tf.function(x, y, n)`: the attack's setup, then n × (render + model forward + backward
    to z) with a plain sign step (no projection, constraint, penalty or keep-best)."""
    step = attack.step_size or attack._default_step_size()

    @tf.function(jit_compile=False)
    def floor(x, y, n):
        unit = attack._to_unit(x)
        setup = attack._setup(unit)

        def body(i, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                logits = logits_fn(attack._from_unit(attack._render(unit, z, setup)))
                total = ops.sum(objective(attack.loss, logits, y))
            return z + step * ops.sign(tape.gradient(total, z))

        return ops.fori_loop(0, n, body, ops.convert_to_tensor(setup["initial"]))

    return floor


def constrained_floor(attack, logits_fn):
    """The floor plus the attack's own projection onto its ball and box, its constraint and its
    penalty (profile only): `pgd_loop` without keep-best, random start or the final forward."""

    @tf.function(jit_compile=False)
    def floor(x, y, n):
        unit = attack._to_unit(x)
        setup = attack._setup(unit)
        space = attack._space(unit)

        def logits_of(z):
            return logits_fn(attack._from_unit(attack._render(unit, z, setup)))

        return pgd_loop(logits_of, space.center, y, eps=space.radius, norm=space.norm,
                        step_size=attack.step_size or attack._default_step_size(),
                        num_steps=n, random_start=False, loss=attack.loss, bounds=space.box,
                        initial=setup["initial"], method=space.method,
                        constraint=lambda v: attack._constraint(v, setup),
                        penalty=attack._penalty(), keep_best=False)[0]

    return floor


def image_floor(logits_fn):
    """`tf.function(x, y, n)`: n × model forward+backward w.r.t. the image, sign steps."""

    @tf.function(jit_compile=False)
    def floor(x, y, n):
        def body(i, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                total = ops.sum(objective("ce", logits_fn(z), y))
            return z + 1e-3 * ops.sign(tape.gradient(total, z))

        return ops.fori_loop(0, n, body, x)

    return floor


def spatial_floor(attack, logits_fn, grid):
    """`tf.function(x, n)`: n × (transform + model forward), parameters from the grid (or drawn
    as the random search draws them when `grid` is None); only a scalar is carried."""

    @tf.function(jit_compile=False)
    def floor(x, n):
        unit = attack._to_unit(x)
        batch = ops.shape(x)[0]

        def body(i, acc):
            if grid is None:
                params = attack._random_params(batch)
            else:
                params = ops.broadcast_to(grid[i][None], (batch, 3))
            logits = logits_fn(attack._from_unit(attack._render(unit, params, None)))
            return acc + ops.sum(logits)

        return ops.fori_loop(0, n, body, ops.zeros(()))

    return floor


# === Variants ===

def build(args, model, x, y):
    xt, yt = tf.constant(x), tf.constant(y)
    x_warm, y_warm = x[:8], y[:8]
    logits_fn = logits_function(model)
    steps, one = tf.constant(args.steps), tf.constant(1)
    variants = []

    def compiled(attack, key, label, fn, inputs, n):
        variants.append(Variant(attack, key, label, lambda: wait(fn(*inputs, one)),
                                lambda: wait(fn(*inputs, n))))

    def called(name, key, label, attack):
        variants.append(Variant(name, key, label, lambda: attack(model, x_warm, y_warm),
                                lambda: attack(model, x, y)))

    compiled("image", "floor", f"image-only floor: {args.steps} × model fwd+bwd w.r.t. x",
             image_floor(logits_fn), (xt, yt), steps)
    for name, (label, make) in GRADIENT_ATTACKS.items():
        if args.attacks and name not in args.attacks:
            continue
        attack = make(num_steps=args.steps, seed=0, batch_size=args.batch_size)
        called(name, "attack", f"{label}: `attack(model, x, y)`", attack)
        # The floor's own attack object: its seed generator is created here, outside graphs.
        twin = make(num_steps=args.steps, seed=0, batch_size=args.batch_size)
        twin._reset_seed()
        compiled(name, "floor", f"floor: {args.steps} × (render + fwd + bwd to z)",
                 sign_floor(twin, logits_fn), (xt, yt), steps)
        if args.profile:
            # A None batch dimension, as `Attack._graph`: the 8-image warm-up traces it.
            batch_fn = tf.function(
                lambda xb, yb, a=twin: a._attack_batch(logits_fn, xb, yb, None),
                jit_compile=False, input_signature=[
                    tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                    tf.TensorSpec((None,), yt.dtype)])
            variants.append(Variant(name, "batch", "profile: `_attack_batch` compiled alone",
                                    lambda f=batch_fn: wait(f(xt[:8], yt[:8])),
                                    lambda f=batch_fn: wait(f(xt, yt))))
            compiled(name, "constrained",
                     "profile: floor + projection, constraint, penalty (no keep-best)",
                     constrained_floor(twin, logits_fn), (xt, yt), steps)
    for name, make in SPATIAL.items():
        if args.attacks and name not in args.attacks:
            continue
        attack = make(args.quick, seed=0, batch_size=args.batch_size)
        twin = make(args.quick, seed=0, batch_size=args.batch_size)
        twin._reset_seed()
        if attack.search == "grid":
            # 775 forwards per batch: timed on the first `spatial_batch` images only.
            count, grid, size = len(attack.grid()), ops.convert_to_tensor(twin.grid()), \
                min(args.spatial_batch, len(x))
            label = f"Spatial grid ({count} transforms), {size} images"
        else:
            count, grid, size = attack.num_samples, None, len(x)
            label = f"Spatial random (worst of {count})"
        variants.append(Variant(name, "attack", f"{label}: `attack(model, x, y)`",
                                lambda a=attack: a(model, x_warm, y_warm),
                                lambda a=attack, k=size: a(model, x[:k], y[:k])))
        compiled(name, "floor", f"floor: {count} × (transform + fwd)",
                 spatial_floor(twin, logits_fn, grid), (xt[:size],), tf.constant(count))
    if args.profile:
        forward = tf.function(logits_fn, jit_compile=False)
        variants.append(Variant("image", "forward", "profile: ONE compiled model forward",
                                lambda: wait(forward(xt[:8])), lambda: wait(forward(xt))))
    return variants


def measure(v):
    """Times one round of `v`: wall and CPU seconds, cores used by other processes."""
    busy = _busy_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    v.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    v.walls.append(wall)
    v.cpus.append(cpu)
    v.others.append(None if busy is None else max(_busy_seconds() - busy - cpu, 0.0) / wall)


def corrupt_throughput(x, num_images):
    """`{kind: (images/s as called, images/s with a reused object)}` over `num_images`."""
    images = np.concatenate([x] * -(-num_images // len(x)))[:num_images]
    out = {}
    for kind in unforeseen.KINDS:
        start = time.perf_counter()
        unforeseen.corrupt(images, kind, severity=3, seed=0)
        first = time.perf_counter() - start
        reused = unforeseen.corruption(kind, 3, seed=0)
        reused.random_transform(images[:8])  # trace
        times = []
        for _ in range(3):
            start = time.perf_counter()
            reused.random_transform(images)
            times.append(time.perf_counter() - start)
        out[kind] = (num_images / first, num_images / statistics.median(times))
    return out


def run(args):
    keras.utils.set_random_seed(0)
    model = md.zoo.small_cnn((28, 28, 1), 10, width=32)
    x, y, source = load_batch(args.batch_size)
    # First: a failure here costs seconds, not the whole run.
    corrupted = corrupt_throughput(x, args.corrupt_images) if args.corrupt_images else {}
    variants = build(args, model, x, y)
    for v in variants:
        start = time.perf_counter()
        v.warmup()
        v.first = time.perf_counter() - start
        print(f"warm-up {v.attack} {v.key}: {v.first:.1f} s", file=sys.stderr)
    for r in range(args.rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            measure(v)
        print(f"round {r + 1}/{args.rounds} (CPU s): " + ", ".join(
            f"{v.attack}/{v.key} {v.cpus[-1]:.1f}" for v in variants), file=sys.stderr)
    return variants, corrupted, source


# === Report ===

def find(variants, attack, key):
    return next((v for v in variants if v.attack == attack and v.key == key), None)


def ratio(variants, attack, key, basis="floor", cpu=True):
    v, floor = find(variants, attack, key), find(variants, attack, basis)
    return v.median(cpu) / floor.median(cpu)


def summary(variants):
    """One row per attack: the decisive numbers."""
    image = find(variants, "image", "floor")
    lines = ["| attack | attack CPU s | floor CPU s | **attack ÷ floor (CPU)** | per round (CPU) "
             "| attack ÷ floor (wall) | rendering: floor ÷ image-only floor (CPU) | target ≤ "
             f"{TARGET} |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for name in dict.fromkeys(v.attack for v in variants if v.attack != "image"):
        attack, floor = find(variants, name, "attack"), find(variants, name, "floor")
        r = attack.median(True) / floor.median(True)
        paired = ", ".join(f"{a / b:.2f}" for a, b in zip(attack.cpus, floor.cpus, strict=True))
        share = ("–" if name.startswith("spatial") else
                 f"{floor.median(True) / image.median(True):.2f}")
        lines.append(f"| {name} | {attack.median(True):.2f} | {floor.median(True):.2f} | "
                     f"**{r:.2f}** | {paired} | {attack.median() / floor.median():.2f} | "
                     f"{share} | {'met' if r <= TARGET else 'NOT met'} |")
    return lines


def detail(variants):
    """Every timed variant, with its spread and the load other processes put on the machine."""
    lines = ["| attack | variant | wall s (median, min–max) | CPU s | × own floor (CPU) | "
             "others (cores) | warm-up s |", "|---|---|---:|---:|---:|---:|---:|"]
    for v in variants:
        floor = find(variants, v.attack, "floor")
        others = [o for o in v.others if o is not None]
        lines.append(
            f"| {v.attack} | {v.label} | {v.median():.2f} ({min(v.walls):.2f}–"
            f"{max(v.walls):.2f}) | {v.median(True):.2f} | "
            f"{v.median(True) / floor.median(True):.2f} | "
            f"{statistics.mean(others) if others else float('nan'):.2f} | {v.first:.1f} |")
    return lines


def corrupt_line(corrupted, num_images):
    if not corrupted:
        return []
    return ["", f"`corrupt()` throughput on {num_images} images, severity 3, images/s as called "
            "(a new attack object per call, so its graph is traced each time) / with a reused "
            "`corruption(kind, 3, seed=0)` object: " + "; ".join(
                f"{kind} {a:,.0f} / {b:,.0f}" for kind, (a, b) in corrupted.items()) + "."]


def section(args, variants, corrupted, source, started, load_start):
    others = [o for v in variants for o in v.others if o is not None]
    mean_others = statistics.mean(others) if others else float("nan")
    command = " ".join(["bench/unforeseen_speed.py", args.options]).strip()
    lines = [
        f"## {SECTION}", "",
        f"Measured {datetime.date.today().isoformat()} by `{command}`; this section is "
        "rewritten on every full run. Only ratios measured in one run are comparable.", "",
        f"- Machine: {machine_info()}; load average {load_start} at the start, "
        f"{load_average()} at the end; other processes used {mean_others:.2f} cores on "
        f"average during the timed runs; total {(time.time() - started) / 60:.1f} min.",
        f"- Settings: `zoo.small_cnn((28, 28, 1), 10, width=32)` (random weights, seed 0), "
        f"{source}, batch {args.batch_size}, K = {args.steps} steps, seed 0, library defaults "
        "otherwise (graph mode, no XLA, keep-best; default step sizes). Attack `eps` are "
        "medium strengths; the cost does not depend on them.",
        "- Timing: a warm-up call on 8 images traces every graph; then "
        f"{args.rounds} interleaved rounds (order rotated), median per variant. The verdict "
        "is the ratio of this process's CPU time (all threads), which the other processes on "
        "the machine barely change; wall clock is shown alongside.",
        f"- Floor (per attack) = one `tf.function`: the attack's `_setup` (its per-batch random "
        f"constants), then {args.steps} × (`_render(x, z)` + model forward + backward to z) "
        "with a plain sign step in an `ops.fori_loop`: no projection, constraint, penalty, "
        "keep-best or final forward. Image-only floor = the same loop on the image without "
        "rendering; floor ÷ image-only floor is what the synthesis adds to the gradient work. "
        "Spatial floors = the number of transforms × (transform + forward) in one loop; the "
        f"grid (775 forwards per batch) is timed on the first {args.spatial_batch} images.",
        "- Beyond its floor a K-step attack runs ~2 more renderings/forwards (`pgd_loop`'s "
        "evaluation of the last iterate for keep-best, `Attack.__call__`'s verification "
        "forward) plus a probe forward on 8 images, numpy copies and, per step, its projection, "
        "constraint, penalty and keep-best `where`s.", "",
    ]
    lines += summary(variants)
    lines += ["", "All timed variants:", ""] + detail(variants)
    lines += corrupt_line(corrupted, args.corrupt_images)
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: batch 32, 2 steps, 3×5×5 spatial grid, 1 round, "
                             "64 images for corrupt(); no write")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="attack steps K")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--spatial-batch", type=int, default=32,
                        help="images for the Spatial grid timings (775 forwards each)")
    parser.add_argument("--corrupt-images", type=int, default=1024,
                        help="images per corrupt() timing (0: skip)")
    parser.add_argument("--attacks", type=lambda s: [k for k in s.split(",") if k],
                        default=None, help="comma-separated subset of "
                        f"{','.join([*GRADIENT_ATTACKS, *SPATIAL])}; implies --no-write")
    parser.add_argument("--profile", action="store_true",
                        help="add per-attack profile rows (implies --no-write)")
    parser.add_argument("--no-write", action="store_true", help="only print the section")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.rounds = 32, 2, 1
        args.corrupt_images = min(args.corrupt_images, 64)
    unknown = set(args.attacks or ()) - {*GRADIENT_ATTACKS, *SPATIAL}
    if unknown:
        parser.error(f"unknown --attacks {sorted(unknown)}")
    if min(args.batch_size, args.steps, args.rounds, args.spatial_batch) < 1 or \
            args.corrupt_images < 0:
        parser.error("--batch-size, --steps, --rounds and --spatial-batch must be positive")
    args.no_write = args.no_write or args.quick or args.profile or bool(args.attacks)
    args.options = " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    started = time.time()
    load_start = load_average()
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    variants, corrupted, source = run(args)
    text = section(args, variants, corrupted, source, started, load_start)
    print(text)
    if not args.no_write:
        update_section(args.output, SECTION, text, HEADER)
        print(f"wrote section '## {SECTION}' of {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
