"""How close are GAT's attack and training step to the cost of the gradients they need?

A default `manidefense.zoo.StyleGenerator()` (28×28×1, random weights, seed 0) and
`manidefense.zoo.small_cnn(width=16)` (the classifier the GAT recipe in `models/gat.py` trains),
batch 128 (`--batch-size`), measured against floors compiled and timed in the same run:

1. **The attack**, `GenerativeAttack(gen, max_iterations=10)` called as a user calls it,
   `attack(classifier, (styles, noises), y)`, on one batch of `gen.sample` latents:
   - *never fooled*: a twin of the classifier whose last layer predicts class 0 for every
     input (kernel × 1e-3, bias 30 on class 0; same architecture, so the same cost) and
     labels 0, so that no example succeeds and every example runs all 10 iterations;
   - *early stopping*: the random classifier with random labels, where most examples are
     fooled at once (GAT's default steps 0.004 / 0.1), and again with large steps
     (0.1 / 1.0) so that every example is fooled and the loop can end early.
   **Floor** = one `tf.function` of n × (forward+backward w.r.t. the flat latents through
   `generator.synthesize(*generator.unflatten(flat))` and the classifier, sign step) in an
   `ops.fori_loop`, plus the final forward (images and logits of the last iterate); n = 10
   (the cap) and, for early stopping, n = the loop bodies the attack actually ran (read from
   the returned `iterations`). The *image-only floor* (the same loop on the classifier alone,
   w.r.t. the image) shows what the generator costs; the *compaction bound* is the floor's
   share a loop that dropped finished examples would need (Σ per-example bodies ÷ (batch ×
   10)).
2. **A GAT train step**: `GenerativeAdversarialTrainer(classifier, attack=..., seed=0)`
   compiled with Adam(1e-3), `fit(dataset, steps_per_epoch=K)` on one repeated batch of 128
   Fashion-MNIST test images (synthetic without the data), after a 1-step warm-up epoch.
   **Floor** = one `tf.function` per step: the attack floor at the cap on 128 candidate
   latents (sign steps on one layer group) + the final forward, one training
   forward+backward of the classifier on the 256 clean + adversarial images and the Adam
   update (on a twin classifier, so the trainer's own classifier, which decides how many
   candidates fool it, only changes through its own steps). Candidate sampling (mapping
   network, noise) and metrics are not in the floor.

Parts (one generator forward; one generator+classifier forward) give the cost model of the
overhead: beyond its floor the attack runs a clean forward for the least-likely target and a
second synthesis of the final latents.

Timing conventions as `bench/unforeseen_speed.py`: every variant is warmed up (traced) first,
then all are timed in interleaved rounds (order rotated per round), median per variant. Wall
clock and this process's CPU time (`time.process_time`, all threads) are both recorded, and
/proc/stat tells how many cores other processes used meanwhile. Ratios use CPU time, which
other processes on this shared 2-core machine barely disturb. Only ratios measured in one run
are comparable.

Usage:
    .venv/bin/python bench/gat_speed.py            # ≈3–4 min; updates BENCHMARKS.md
    .venv/bin/python bench/gat_speed.py --steps 10 --rounds 5   # longer; updates BENCHMARKS.md
    .venv/bin/python bench/gat_speed.py --quick    # smoke test (< 40 s), no write
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
from manidefense.attacks import GenerativeAttack  # noqa: E402
from manidefense.attacks.gradients import logits_function  # noqa: E402
from manidefense.training import GenerativeAdversarialTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import (  # noqa: E402
    HEADER,
    _busy_seconds,
    load_average,
    load_batch,
    machine_info,
)

SECTION = "gat_speed"
ROOT = Path(__file__).resolve().parent.parent
CAP = 10  # max_iterations (GAT's realism threshold)
LARGE_STEPS = dict(style_step=0.1, noise_step=1.0)
PART_CALLS = 5  # calls per round of the cheap part rows
QUIET = 0.25  # a timing is "quiet" when other processes used less than this many cores


class Variant:
    """A timed quantity: `warmup()` once (traces), then `run()` per round; `units` is what one
    run covers (examples for the attack rows, steps for the trainer rows)."""

    def __init__(self, group, key, label, warmup, run, units):
        self.group, self.key, self.label = group, key, label
        self.warmup, self.run, self.units = warmup, run, units
        self.walls, self.cpus, self.others, self.first = [], [], [], None
        self.info = {}

    def median(self, cpu=True):
        """Median seconds per unit."""
        return statistics.median(self.cpus if cpu else self.walls) / self.units


def wait(out):
    """Blocks until a (nest of) tensor result exists."""
    for t in tf.nest.flatten(out):
        np.asarray(t)


def measure(v):
    busy = _busy_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    v.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    v.others.append(None if busy is None else max(_busy_seconds() - busy - cpu, 0.0) / wall)
    v.walls.append(wall)
    v.cpus.append(cpu)


# === Models ===

def never_fooled(width, label=0):
    """A `small_cnn` whose prediction is `label` for every input: its last layer's kernel is
    scaled by 1e-3 (gradients still flow) and its bias is 30 on `label`."""
    model = md.zoo.small_cnn((28, 28, 1), 10, width=width, name="never_fooled")
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    bias = np.zeros_like(bias)
    bias[label] = 30.0
    last.set_weights([kernel * 1e-3, bias])
    return model


def loop_bodies(iterations, success, cap):
    """Forward+backward passes `pgd_loop(stop_on_success=True)` ran on the whole batch: it
    stops after the body in which the last example succeeded (`iterations` = its step)."""
    if not np.all(success):
        return cap
    return int(min(np.max(iterations) + 1, cap))


def example_bodies(iterations, cap):
    """Σ over examples of the passes each needed (a loop that dropped finished examples)."""
    return int(np.sum(np.minimum(iterations + 1, cap)))


# === Floors ===

def latent_floor(gen, logits_fn):
    """`tf.function(flat, y, steps, n)`: n × (synthesis + classifier forward + backward to the
    flat latents) with sign steps `steps`, then the final forward (images and logits)."""

    def classify(flat):
        images = ops.cast(gen.synthesize(*gen.unflatten(flat)), "float32")
        return images, logits_fn(images)

    @tf.function(jit_compile=False)
    def floor(flat, y, steps, n):
        def body(i, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                total = ops.sum(_ce(classify(z)[1], y))
            return z + steps * ops.sign(tape.gradient(total, z))

        return classify(ops.fori_loop(0, n, body, flat))

    return floor


def image_floor(logits_fn):
    """`tf.function(x, y, n)`: n × classifier forward+backward w.r.t. the image, then a final
    forward: the latent floor without the generator."""

    @tf.function(jit_compile=False)
    def floor(x, y, n):
        def body(i, z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                total = ops.sum(_ce(logits_fn(z), y))
            return z + 1e-3 * ops.sign(tape.gradient(total, z))

        return logits_fn(ops.fori_loop(0, n, body, x))

    return floor


def train_floor(gen, classifier, optimizer, n):
    """`tf.function(x, y, flat, labels, steps)`: the latent floor at `n` iterations on the
    candidates, then the training forward+backward on `[x, images]` and the update."""
    logits_fn = logits_function(classifier)
    attack = latent_floor(gen, logits_fn).python_function
    variables = classifier.trainable_variables

    @tf.function(jit_compile=False)
    def floor(x, y, flat, labels, steps):
        images, logits = attack(flat, labels, steps, n)
        with tf.GradientTape() as tape:
            out = classifier(ops.concatenate([x, images]), training=True)
            loss = ops.mean(_ce(out, ops.concatenate([y, labels])))
        optimizer.apply(tape.gradient(loss, variables), variables)
        fooled = ops.not_equal(ops.cast(ops.argmax(logits, axis=-1), "int64"), labels)
        return loss, ops.mean(ops.cast(fooled, "float32"))

    return floor


def _ce(logits, y):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


# === Variants ===

def attack_variants(args, gen, latents, flat, y_random, width):
    batch = len(y_random)
    classifier = md.zoo.small_cnn((28, 28, 1), 10, width=width)
    constant = never_fooled(width)
    logits_fn = logits_function(classifier)
    floor = latent_floor(gen, logits_fn)
    zeros = np.zeros(batch, np.int64)
    flat_t, y_t = tf.constant(flat), tf.constant(y_random)
    variants = []

    def called(key, label, model, y, **steps):
        attack = GenerativeAttack(gen, max_iterations=CAP, **steps)
        v = Variant("attack", key, label, None, None, batch)

        def run():
            result = attack(model, latents, y)
            v.info.update(bodies=loop_bodies(result.iterations, result.success, CAP),
                          per_example=example_bodies(result.iterations, CAP) / batch,
                          success=float(np.mean(result.success)),
                          iterations=np.bincount(result.iterations, minlength=CAP + 1))
        # The warm-up is a full call: it traces the graph (batch dimension None) and tells
        # how many loop bodies the attack runs, which decides its floor row.
        v.warmup = v.run = run
        variants.append(v)
        return attack

    default = called("never", "never fooled (constant classifier, labels 0), default steps",
                     constant, zeros)
    called("early", "early stopping: random classifier, random labels, default steps",
           classifier, y_random)
    called("early_large", "early stopping: random classifier, random labels, style_step "
           f"{LARGE_STEPS['style_step']}, noise_step {LARGE_STEPS['noise_step']}", classifier,
           y_random, **LARGE_STEPS)
    steps = tf.constant(default.step_vector())

    def compiled(key, label, fn, inputs, n, warm, units=batch, calls=1):
        def run():
            for _ in range(calls):
                out = fn(*inputs, n)
            wait(out)
        variants.append(Variant("attack", key, label, lambda: wait(fn(*inputs, warm)), run,
                                units * calls))

    compiled("floor", f"floor: {CAP} × (synthesis + classifier fwd + bwd to latents) + final "
             "forward", floor, (flat_t, y_t, steps), tf.constant(CAP), tf.constant(1))
    images = tf.constant(np.asarray(gen.synthesize(*gen.unflatten(flat_t)), np.float32))
    compiled("image_floor", f"image-only floor: {CAP} × classifier fwd+bwd w.r.t. the image + "
             "final forward", image_floor(logits_fn), (images, y_t), tf.constant(CAP),
             tf.constant(1))
    synth = tf.function(lambda f, n: gen.synthesize(*gen.unflatten(f)))
    both = tf.function(lambda f, n: logits_fn(gen.synthesize(*gen.unflatten(f))))
    compiled("part_gen", "part: one generator forward", synth, (flat_t,), None, None,
             calls=PART_CALLS)
    compiled("part_both", "part: one generator + classifier forward", both, (flat_t,), None,
             None, calls=PART_CALLS)
    return variants, floor, (flat_t, y_t, steps)


def early_floors(variants, floor, inputs, batch):
    """A floor at the loop bodies each early-stopping attack actually ran (when < the cap)."""
    extra = []
    for v in [v for v in variants if v.key.startswith("early")]:
        n = v.info["bodies"]
        if n < CAP:
            key = f"floor_{n}"
            if not any(e.key == key for e in extra):
                extra.append(Variant(
                    "attack", key, f"floor at the {n} bodies run: {n} × (synthesis + "
                    "classifier fwd + bwd) + final forward",
                    lambda: wait(floor(*inputs, tf.constant(1))),
                    lambda n=n: wait(floor(*inputs, tf.constant(n))), batch))
            v.info["floor_key"] = key
    return extra


def trainer_variants(args, gen, width, x, y):
    batch = len(x)
    classifier = md.zoo.small_cnn((28, 28, 1), 10, width=width)
    attack = GenerativeAttack(gen)
    trainer = GenerativeAdversarialTrainer(classifier, attack=attack, max_iterations=CAP, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    traces = [0]
    step = trainer.train_step

    def counted(data):
        traces[0] += 1  # Python runs train_step only while tracing
        return step(data)

    trainer.train_step = counted
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    recorder = StepRecorder()

    def fit(k):
        trainer.fit(dataset, epochs=1, steps_per_epoch=k, verbose=0, callbacks=[recorder])

    fit_v = Variant("trainer", "fit", f"`trainer.fit(dataset, steps_per_epoch={args.steps})`",
                    lambda: fit(1), lambda: fit(args.steps), args.steps)
    fit_v.info = dict(recorder=recorder, traces=traces)

    # The floor's own classifier and optimizer (same architecture, same kind of update).
    twin = md.zoo.small_cnn((28, 28, 1), 10, width=width)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(twin.trainable_variables)
    labels = np.random.default_rng(2).integers(0, 10, batch).astype(np.int64)
    styles, noises, _ = gen.sample(labels, seed=1)
    inputs = (tf.constant(x), tf.constant(y.astype(np.int64)), gen.flatten(styles, noises),
              tf.constant(labels), tf.constant(attack.step_vector(gen.layer_groups[0])))
    floor = train_floor(gen, twin, optimizer, tf.constant(CAP))

    def floor_run(k):
        for _ in range(k):
            out = floor(*inputs)
        wait(out)

    floor_v = Variant("trainer", "floor", f"floor: attack floor at the cap ({CAP}) on {batch} "
                      f"candidates + training fwd+bwd on {2 * batch} images + Adam update",
                      lambda: floor_run(1), lambda: floor_run(args.steps), args.steps)
    return [fit_v, floor_v]


class StepRecorder(keras.callbacks.Callback):
    """Per-step kept fraction, from the epoch's running mean in the batch logs (every step
    adds the same number of candidates)."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["kept_fraction"])
        self.kept.append((batch + 1) * mean - batch * self._previous)
        self._previous = mean


# === Run ===

def run(args):
    keras.utils.set_random_seed(0)
    gen = md.zoo.StyleGenerator(seed=0)
    y_random = np.random.default_rng(1).integers(0, 10, args.batch_size).astype(np.int64)
    styles, noises, _ = gen.sample(y_random, seed=0)
    latents = ([np.asarray(s) for s in styles], [np.asarray(n) for n in noises])
    flat = np.asarray(gen.flatten(styles, noises), np.float32)
    variants, floor, inputs = attack_variants(args, gen, latents, flat, y_random, args.width)
    x, y, source = load_batch(args.batch_size)
    if not args.no_trainer:
        variants += trainer_variants(args, gen, args.width, x, y)
    for v in variants:
        start = time.perf_counter()
        v.warmup()
        v.first = time.perf_counter() - start
        print(f"warm-up {v.group}/{v.key}: {v.first:.1f} s", file=sys.stderr)
    extra = early_floors(variants, floor, inputs, args.batch_size)
    for v in extra:
        v.warmup()
        v.first = 0.0
    variants += extra
    for r in range(args.rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            measure(v)
        print(f"round {r + 1}/{args.rounds} (CPU s): " + ", ".join(
            f"{v.group}/{v.key} {v.cpus[-1]:.2f}" for v in variants), file=sys.stderr)
    return variants, source


# === Report ===

def find(variants, group, key):
    return next((v for v in variants if v.group == group and v.key == key), None)


def attack_rows(variants, batch):
    floor = find(variants, "attack", "floor")
    lines = [f"| attack (batch {batch}, cap {CAP}) | CPU ms/example | × floor at the cap (CPU) "
             "| per round | × floor at the bodies run (CPU) | × floor (wall) | loop bodies run "
             "| success | compaction bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        if v.group != "attack" or v.key not in ("never", "early", "early_large"):
            continue
        own = find(variants, "attack", v.info.get("floor_key", "floor"))
        paired = ", ".join(f"{a / b:.2f}" for a, b in zip(v.cpus, floor.cpus, strict=True))
        lines.append(
            f"| {v.label} | {v.median() * 1000:.1f} | **{v.median() / floor.median():.2f}** | "
            f"{paired} | {v.median() / own.median():.2f} | "
            f"{v.median(False) / floor.median(False):.2f} | {v.info['bodies']} | "
            f"{v.info['success']:.0%} | {v.info['per_example'] / CAP:.2f} |")
    return lines


def trainer_rows(variants, batch):
    fit, floor = find(variants, "trainer", "fit"), find(variants, "trainer", "floor")
    if fit is None:
        return []
    paired = ", ".join(f"{a / b:.2f}" for a, b in zip(fit.cpus, floor.cpus, strict=True))
    kept = fit.info["recorder"].kept
    at_cap = sum(k < 1.0 - 1e-6 for k in kept)
    return [
        f"| GAT train step (batch {batch} + {batch} candidates) | CPU s/step | "
        "**× floor (CPU)** | "
        "per round | × floor (wall) | steps whose loop ran to the cap |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `fit` | {fit.median():.2f} | **{fit.median() / floor.median():.2f}** | {paired} | "
        f"{fit.median(False) / floor.median(False):.2f} | {at_cap} of {len(kept)} (kept "
        f"fraction {min(kept):.2f}–{max(kept):.2f}) |",
    ]


def detail(variants):
    lines = ["| group | variant | CPU s per run (median, min–max) | wall s | units per run | "
             "others (cores) | warm-up s |", "|---|---|---:|---:|---:|---:|---:|"]
    for v in variants:
        others = [o for o in v.others if o is not None]
        lines.append(
            f"| {v.group} | {v.label} | {statistics.median(v.cpus):.2f} ({min(v.cpus):.2f}–"
            f"{max(v.cpus):.2f}) | {statistics.median(v.walls):.2f} | {v.units} | "
            f"{statistics.mean(others) if others else float('nan'):.2f} | {v.first:.1f} |")
    return lines


def cost_lines(variants):
    """What dominates, and what the overhead beyond the floor is made of."""
    floor, image = find(variants, "attack", "floor"), find(variants, "attack", "image_floor")
    gen, both = find(variants, "attack", "part_gen"), find(variants, "attack", "part_both")
    never = find(variants, "attack", "never")
    extra = (both.median() + gen.median()) / floor.median()
    lines = [
        f"- The generator is {1 - image.median() / floor.median():.0%} of the attack floor (the "
        f"image-only floor is {image.median() / floor.median():.2f} of it); one generator "
        f"forward is {gen.median() / floor.median():.3f} of the floor, one generator + "
        f"classifier forward {both.median() / floor.median():.3f}.",
        f"- Cost model of the attack's overhead: the clean forward for the least-likely target "
        f"and the second synthesis of the final latents predict {1 + extra:.2f}× the floor; "
        f"measured (never fooled) {never.median() / floor.median():.2f}× (the rest: the "
        "per-step `where`s, the probe on 8 images, latent checks and numpy copies).",
        "- Early stopping ends the loop only when every example of the batch has succeeded; "
        "finished examples still pay full forward+backward passes until then. The compaction "
        "bound is the floor share a loop that dropped finished examples would need.",
    ]
    fit, tfloor = find(variants, "trainer", "fit"), find(variants, "trainer", "floor")
    if fit is not None:
        lines.append(
            f"- In the train step the attack floor ({floor.median() * floor.units:.2f} CPU s per "
            f"batch) is {floor.median() * floor.units / tfloor.median():.0%} of the step's "
            "floor; the training forward+backward and the update are the rest.")
        traces = fit.info["traces"][0]
        lines.append(f"- `train_step` traced {traces}× in all (no retracing per layer group "
                     "when this stays at the warm-up's count).")
    return lines


def section(args, variants, source, started, load_start):
    others = [o for v in variants for o in v.others if o is not None]
    mean_others = statistics.mean(others) if others else float("nan")
    command = " ".join(["bench/gat_speed.py", args.options]).strip()
    lines = [
        f"## {SECTION}", "",
        f"Measured {datetime.date.today().isoformat()} by `{command}`; this section is "
        "rewritten on every full run. Only ratios measured in one run are comparable.", "",
        f"- Machine: {machine_info()}; load average {load_start} at the start, "
        f"{load_average()} at the end; other processes used {mean_others:.2f} cores on "
        f"average during the timed runs; total {(time.time() - started) / 60:.1f} min.",
        f"- Settings: `zoo.StyleGenerator()` (28×28×1, 6 layers, 2,506 latents per image, "
        f"random weights, seed 0) and `zoo.small_cnn(width={args.width})` (random weights); "
        f"batch {args.batch_size} of `gen.sample` latents with random labels; "
        f"`GenerativeAttack(gen, max_iterations={CAP})` (style_step 0.004, noise_step 0.1, "
        "least-likely target, all layers) unless stated. Trainer: "
        f"`GenerativeAdversarialTrainer(classifier, attack=GenerativeAttack(gen), seed=0)`, "
        f"Adam(1e-3), one repeated batch of {source}, "
        f"{args.steps} steps per timing after a 1-step warm-up epoch.",
        f"- Timing: warm-up calls trace every graph; then {args.rounds} interleaved rounds "
        "(order rotated), median per variant; ratios of this process's CPU time (all "
        "threads), wall clock alongside.",
        f"- Attack floor = one `tf.function`: n × (synthesis `gen.synthesize(*gen.unflatten("
        f"flat))` + classifier forward + backward to the flat latents, sign step) in an "
        f"`ops.fori_loop`, plus the final forward; n = {CAP}, and n = the loop bodies run for "
        "early stopping. Train-step floor = the attack floor at the cap on the candidates + "
        f"one training forward+backward on the {2 * args.batch_size} clean and adversarial "
        "images + Adam update "
        "(candidate sampling and metrics excluded).", "",
    ]
    lines += attack_rows(variants, args.batch_size)
    lines += [""] + trainer_rows(variants, args.batch_size)
    lines += [""] + cost_lines(variants)
    lines += ["", "All timed variants:", ""] + detail(variants)
    return "\n".join(lines) + "\n"


def summary(variants):
    """The ratios, printed on stderr at the end."""
    floor = find(variants, "attack", "floor")
    out = [f"{v.key}: {v.median() * 1000:.1f} CPU ms/example = {v.median() / floor.median():.2f}"
           f"× floor ({v.info['bodies']} bodies)"
           for v in variants if v.key in ("never", "early", "early_large")]
    fit, tfloor = find(variants, "trainer", "fit"), find(variants, "trainer", "floor")
    if fit is not None:
        out.append(f"train step: {fit.median():.2f} CPU s = {fit.median() / tfloor.median():.2f}"
                   "× floor")
    return "; ".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: batch 32, 2 trainer steps per timing, 1 round; "
                             "no write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width")
    parser.add_argument("--steps", type=int, default=5, help="trainer steps per timing (K)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--no-trainer", action="store_true",
                        help="time the attack only (implies --no-write)")
    parser.add_argument("--no-write", action="store_true", help="only print the section")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.rounds = 32, 2, 1
    if min(args.batch_size, args.width, args.steps, args.rounds) < 1:
        parser.error("--batch-size, --width, --steps and --rounds must be positive")
    args.no_write = args.no_write or args.quick or args.no_trainer
    args.options = " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    started = time.time()
    load_start = load_average()
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    variants, source = run(args)
    text = section(args, variants, source, started, load_start)
    print(text)
    print(summary(variants), file=sys.stderr)
    if not args.no_write:
        update_section(args.output, SECTION, text, HEADER)
        print(f"wrote section '## {SECTION}' of {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
