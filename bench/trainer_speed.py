"""How much does one DMAT training step cost over the work it cannot skip?

`DualManifoldTrainer` on `zoo.small_cnn(width=16)` (28×28×1, random weights) with a decoder on
16-d latents, batch 128, in three modes with the authors' attacks (original-code-notes §3.2):

- **DMAT**: PGD-5 L∞ in image space (eps 4/255, step 1/255) and LatentPGD-5 L∞ on the latents
  (eta 0.02, step 0.005), both with random starts, loss 0.5·CE(x_img) + 0.5·CE(G(w_adv));
- **AT**: the image attack only, loss CE(x_img);
- **OM-AT**: the latent attack only, loss CE(G(w_adv)).

Each mode is timed three ways over K steps on one repeated batch, after a warm-up epoch:

1. `trainer.fit(dataset, steps_per_epoch=K, verbose=0)` — what a user pays (the compiled
   train function plus Keras' per-step loop, callbacks and the `tf.data` iterator);
2. `trainer.train_function(iterator)` called K times — the compiled step alone;
3. **the floor**: one `tf.function` doing exactly the necessary work: 5 classifier
   forward+backward passes w.r.t. the image (sign step, projection, clipping), 5
   decoder+classifier forward+backward passes w.r.t. the latent (sign step, projection),
   one decoder forward G(w_adv), then the training forward+backward through the classifier on
   the adversarial batch(es) and an SGD-momentum update. No random starts, no keep-best, no
   metrics. The trainer also runs one clean forward pass for its `accuracy` metric (it has no
   clean loss term in these modes); the strict floor leaves it out and a second floor row
   ("floor + clean forward") adds it, so both ratios are shown. The target (≤ 1.25) is judged
   against the strict floor.

All variants are timed in interleaved rounds (order rotated per round), median per variant.
Wall clock and this process's CPU time (all threads, `time.process_time`) are both recorded,
and /proc/stat tells how many cores other processes used meanwhile (the machine is shared).
`--profile` adds DMAT rows that split the overhead (keep-best, random starts, the fit loop,
an unrolled floor) and the cost of the floor's parts.

Usage:
    .venv/bin/python bench/trainer_speed.py            # ≈7 min on a busy 2-core machine;
                                                       # updates BENCHMARKS.md
    .venv/bin/python bench/trainer_speed.py --profile --rounds 7   # + profile rows, ≈15 min
    .venv/bin/python bench/trainer_speed.py --quick    # DMAT only, batch 32, 2 steps, 1 round;
                                                       # no write (< 1 min)
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
from manidefense.attacks import PGD, LatentPGD  # noqa: E402
from manidefense.training import DualManifoldTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import HEADER, load_average, machine_info  # noqa: E402

SECTION = "trainer_speed"
ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.25
QUIET = 0.25  # a timing is "quiet" when other processes used less than this many cores
LATENT_DIM = 16
IMAGE = dict(eps=4 / 255, step_size=1 / 255, num_steps=5)
LATENT = dict(eta=0.02, step_size=0.005, num_steps=5)
MODES = {"DMAT": (True, True), "AT": (True, False), "OM-AT": (False, True)}


def sgd():
    # The authors' optimiser (SGD, momentum 0.9, weight decay 1e-4); the floor uses the same.
    return keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=1e-4)


def make_decoder(kind):
    """The VAE's decoder when `manidefense.zoo.generators` exists, else a small conv decoder."""
    if kind == "vae":
        try:
            from manidefense.zoo.generators import VAE
        except ImportError:
            print("manidefense.zoo.generators unavailable; using the small decoder",
                  file=sys.stderr)
        else:
            decoder = VAE(latent_dim=LATENT_DIM).decoder
            return decoder, (f"`zoo.generators.VAE(latent_dim={LATENT_DIM}).decoder` (Dense → "
                             "7×7×64 → ConvT 64 and ConvT 32, stride 2 → Conv 1 → sigmoid)")
    layers = keras.layers
    decoder = keras.Sequential([
        keras.Input((LATENT_DIM,)),
        layers.Dense(7 * 7 * 32, activation="relu"),
        layers.Reshape((7, 7, 32)),
        layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
        layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid"),
    ], name="small_decoder")
    return decoder, ("small conv decoder built in the script (Dense → 7×7×32 → ConvT 32 and "
                     "ConvT 1, stride 2 → sigmoid)")


# === The floor: the necessary work in one compiled function ===

def _ce(logits, y):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def _ascend(fn, z0, y, eps, step, bounds, num_steps, unroll=False):
    """`num_steps` forward+backward passes of `fn` w.r.t. `z`, each with a sign step,
    projection onto the eps-ball around `z0` and clipping: PGD without its extras."""
    def body(i, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = ops.sum(_ce(fn(z), y))
        grad = tape.gradient(total, z)
        z = z0 + ops.clip(z + step * ops.sign(grad) - z0, -eps, eps)
        return z if bounds is None else ops.clip(z, *bounds)

    if unroll:
        z = z0
        for i in range(num_steps):
            z = body(i, z)
        return z
    return ops.fori_loop(0, num_steps, body, z0)


def make_floor(classifier, decoder, image, latent, clean, unroll=False):
    """A `tf.function(x, w, y)` doing one step's necessary work (see the module docstring)."""
    optimizer = sgd()
    optimizer.build(classifier.trainable_variables)
    weight = 0.5 if image and latent else 1.0

    def classify(z):
        return classifier(z, training=False)

    @tf.function
    def floor(x, w, y):
        adversarial = []
        if image:
            adversarial.append(_ascend(classify, x, y, IMAGE["eps"], IMAGE["step_size"],
                                       (0.0, 1.0), IMAGE["num_steps"], unroll))
        if latent:
            w_adv = _ascend(lambda v: classify(decoder(v, training=False)), w, y,
                            LATENT["eta"], LATENT["step_size"], None, LATENT["num_steps"],
                            unroll)
            adversarial.append(decoder(w_adv, training=False))
        variables = classifier.trainable_variables
        with tf.GradientTape() as tape:
            loss = sum(weight * ops.mean(_ce(classifier(a, training=True), y))
                       for a in adversarial)
        optimizer.apply(tape.gradient(loss, variables), variables)
        if not clean:
            return (loss,)
        # The clean forward pass the trainer spends on its accuracy metric (an output, so
        # that it is not pruned from the graph).
        hits = ops.equal(ops.argmax(classify(x), axis=-1), y)
        return loss, ops.mean(ops.cast(hits, "float32"))

    return floor


# === The trainers ===

def make_trainer(classifier, decoder, image, latent, keep_best=True, random_start=True):
    image_attack = PGD(**IMAGE, random_start=random_start) if image else None
    latent_attack = LatentPGD(decoder, **LATENT, random_start=random_start) if latent else None
    for attack in (image_attack, latent_attack):
        if attack is not None and not keep_best:
            attack._keep_best = False  # profile only: the class attribute PGD's loop reads
    trainer = DualManifoldTrainer(classifier, image_attack=image_attack,
                                  latent_attack=latent_attack, seed=0)
    trainer.compile(optimizer=sgd())
    # Count the traces of train_step: Python runs it only while tracing.
    traces = [0]
    step = trainer.train_step

    def counted(data):
        traces[0] += 1
        return step(data)

    trainer.train_step = counted
    return trainer, traces


class Variant:
    """A timed quantity: `warmup()` once (traces and compiles), then `run()` K steps per round;
    times are kept per step."""

    def __init__(self, mode, key, label, warmup, run):
        self.mode, self.key, self.label, self.warmup, self.run = mode, key, label, warmup, run
        self.walls, self.cpus, self.others, self.first = [], [], [], None

    def median(self, cpu=False):
        return statistics.median(self.cpus if cpu else self.walls)


def trainer_variants(mode, label, trainer, data, steps, direct=True):
    dataset = tf.data.Dataset.from_tensors(data).repeat()
    iterator = iter(dataset)

    def fit(k):
        trainer.fit(dataset, epochs=1, steps_per_epoch=k, verbose=0)

    def call(k):
        for _ in range(k):
            logs = trainer.train_function(iterator)
        float(logs["loss"])  # wait for the last step

    variants = [Variant(mode, "fit", f"{label}: `fit`", lambda: fit(2), lambda: fit(steps))]
    if direct:
        variants.append(Variant(mode, "call", f"{label}: `train_function` calls",
                                lambda: call(1), lambda: call(steps)))
    return variants


def floor_variant(mode, key, label, floor, args, steps):
    def run(k):
        for _ in range(k):
            out = floor(*args)
        np.asarray(tf.nest.flatten(out)[0])  # wait for the last call

    return Variant(mode, key, label, lambda: run(2), lambda: run(steps))


def build(args, decoder, x, w, y):
    xt, wt, yt = tf.constant(x), tf.constant(w), tf.constant(y)
    variants, traces = [], {}
    for mode, (image, latent) in MODES.items():
        if args.modes and mode not in args.modes:
            continue
        classifier = md.zoo.small_cnn(input_shape=(28, 28, 1), num_classes=10, width=16)
        trainer, traces[mode] = make_trainer(classifier, decoder, image, latent)
        data = ((xt, wt), yt) if latent else (xt, yt)
        variants += trainer_variants(mode, f"{mode} trainer", trainer, data, args.steps)
        for clean, key, label in ((False, "floor", "floor"),
                                  (True, "floor_clean", "floor + clean forward")):
            floor = make_floor(classifier, decoder, image, latent, clean)
            variants.append(floor_variant(mode, key, f"{mode} {label}", floor, (xt, wt, yt),
                                          args.steps))
        if args.profile and mode == "DMAT":
            variants += profile_variants(args, classifier, decoder, data, (xt, wt, yt), traces)
    return variants, traces


def profile_variants(args, classifier, decoder, data, tensors, traces):
    steps = args.steps
    rows = []
    for key, label, kwargs in (("no_keep_best", "attacks without keep-best", {"keep_best": False}),
                               ("no_random", "attacks without random starts",
                                {"random_start": False})):
        trainer, traces[key] = make_trainer(classifier, decoder, True, True, **kwargs)
        for v in trainer_variants("DMAT", f"profile: trainer, {label}", trainer, data, steps,
                                  direct=False):
            v.key = key
            rows.append(v)
    trainer, traces["plain"] = make_trainer(classifier, decoder, True, True)
    # No autograph, as in Keras' own train function (`do_not_convert`).
    plain = tf.function(lambda x, w, y: trainer.train_step(((x, w), y))["loss"],
                        autograph=False)
    rows.append(floor_variant("DMAT", "plain", "profile: `train_step` in a plain tf.function "
                              "(no fit loop, no iterator)", plain, tensors, steps))
    unrolled = make_floor(classifier, decoder, True, True, clean=False, unroll=True)
    rows.append(floor_variant("DMAT", "floor_unrolled", "profile: floor with unrolled loops",
                              unrolled, tensors, steps))
    # The passes the trainer runs beyond the strict floor, alone (one call per step).
    forward = tf.function(lambda x, w, y: classifier(x, training=False))
    decoded = tf.function(lambda x, w, y: classifier(decoder(w, training=False),
                                                     training=False))
    rows.append(floor_variant("DMAT", "part_forward", "part: one classifier forward",
                              forward, tensors, steps))
    rows.append(floor_variant("DMAT", "part_decoded", "part: one decoder+classifier forward",
                              decoded, tensors, steps))
    return rows


def _busy_seconds():
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def measure(v, steps):
    """Times one round of `v`: wall and CPU seconds per step, cores other processes used."""
    busy = _busy_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    v.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if busy is not None:
        v.others.append(max(_busy_seconds() - busy - cpu, 0.0) / wall)
    v.walls.append(wall / steps)
    v.cpus.append(cpu / steps)


def run(args):
    keras.utils.set_random_seed(0)
    decoder, decoder_label = make_decoder(args.decoder)
    w = np.random.default_rng(0).normal(size=(args.batch_size, LATENT_DIM)).astype(np.float32)
    x = np.asarray(decoder(w, training=False), dtype=np.float32)  # on-manifold: x = G(w)
    y = np.random.default_rng(1).integers(0, 10, args.batch_size).astype(np.int64)
    variants, traces = build(args, decoder, x, w, y)
    for v in variants:
        start = time.perf_counter()
        v.warmup()
        v.first = time.perf_counter() - start
    for r in range(args.rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            measure(v, args.steps)
    return variants, {k: t[0] for k, t in traces.items()}, decoder_label


# === Report ===

def find(variants, mode, key):
    return next(v for v in variants if v.mode == mode and v.key == key)


def table(variants):
    lines = ["| mode | variant | wall ms/step | CPU ms/step | × floor (wall) | × floor (CPU) | "
             "others (cores) | warm-up s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        floor = find(variants, v.mode, "floor")
        lines.append(
            f"| {v.mode} | {v.label.removeprefix(v.mode + ' ')} | {v.median() * 1000:.0f} | "
            f"{v.median(True) * 1000:.0f} | {v.median() / floor.median():.2f} | "
            f"{v.median(True) / floor.median(True):.2f} | {statistics.mean(v.others):.2f} | "
            f"{v.first:.1f} |")
    return lines


def verdicts(variants, loaded):
    measure = "CPU" if loaded else "wall"
    lines = []
    for mode in dict.fromkeys(v.mode for v in variants):
        fit, floor = find(variants, mode, "fit"), find(variants, mode, "floor")
        clean = find(variants, mode, "floor_clean")
        ratio = fit.median(loaded) / floor.median(loaded)
        paired = [a / b for a, b in zip(fit.cpus if loaded else fit.walls,
                                        floor.cpus if loaded else floor.walls, strict=True)]
        with_clean = fit.median(loaded) / clean.median(loaded)
        lines.append(
            f"- **{mode}**: `fit` step = {ratio:.2f}× the strict floor in {measure} time "
            f"(target ≤ {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}; per round "
            f"{', '.join(f'{p:.2f}' for p in paired)}), {with_clean:.2f}× the floor with the "
            f"clean forward pass{predicted(variants, mode, loaded)}.")
    return lines


def predicted(variants, mode, loaded):
    """The step/floor ratio the extra passes alone explain (needs the profile's part rows)."""
    if not any(v.key == "part_forward" for v in variants):
        return ""
    image, latent = MODES[mode]
    forward = find(variants, "DMAT", "part_forward").median(loaded)
    decoded = find(variants, "DMAT", "part_decoded").median(loaded)
    # Keep-best's final evaluation of each attack, plus the clean forward for the accuracy.
    extra = (1 + image) * forward + latent * decoded
    ratio = 1 + extra / find(variants, mode, "floor").median(loaded)
    return f"; the extra passes alone (cost model below) predict {ratio:.2f}×"


def profile_lines(variants, loaded):
    """The DMAT overhead split into causes, from differences paired within each round."""
    if not any(v.key == "plain" for v in variants):
        return []

    def times(key):
        v = find(variants, "DMAT", key)
        return v.cpus if loaded else v.walls

    floor = times("floor")

    def share(a, b):
        """Median and range over rounds of (a − b) / floor."""
        d = [(x - y) / f for x, y, f in zip(times(a), times(b), floor, strict=True)]
        return f"{statistics.median(d):+.3f} ({min(d):+.2f}…{max(d):+.2f})"

    def per_floor(key):
        return statistics.median(t / f for t, f in zip(times(key), floor, strict=True))

    forward, decoded = per_floor("part_forward"), per_floor("part_decoded")
    model = 2 * forward + decoded
    return [
        "", "**Where the DMAT overhead goes** (in units of the strict floor; median over the "
        "rounds of the paired differences, range in brackets — their spread is the noise of "
        "this run):", "",
        f"- `fit` − `train_function` calls (Keras' per-call loop, callbacks, new iterator): "
        f"{share('fit', 'call')}; `train_function` calls − `train_step` in a plain "
        f"tf.function (the iterator and Keras' Optional/strategy plumbing): "
        f"{share('call', 'plain')}.",
        f"- keep-best (trainer − trainer with `_keep_best=False`): "
        f"{share('fit', 'no_keep_best')}; random starts: {share('fit', 'no_random')}; the "
        f"clean forward pass (floor + clean forward − floor): "
        f"{share('floor_clean', 'floor')}; unrolled − loop floor: "
        f"{share('floor_unrolled', 'floor')}.",
        f"- Cost model: beyond the strict floor the trainer runs one classifier forward for "
        f"its clean accuracy and keep-best's final evaluation of each attack's last iterate "
        f"(one classifier forward on x_img, one decoder+classifier forward on w_adv; without "
        f"keep-best TensorFlow prunes that evaluation). Measured alone: classifier forward "
        f"{forward:.3f}, decoder+classifier forward {decoded:.3f} of the floor, so "
        f"{model:.3f} in all (keep-best {forward + decoded:.3f}, clean accuracy "
        f"{forward:.3f}).",
    ]


def section(args, variants, traces, decoder_label, started, load_start):
    loaded = statistics.mean(o for v in variants for o in v.others) >= QUIET
    others = statistics.mean(o for v in variants for o in v.others)
    command = " ".join(["bench/trainer_speed.py", args.options]).strip()
    lines = [
        f"## {SECTION}", "",
        f"Measured {datetime.date.today().isoformat()} by `{command}`; "
        "this section is rewritten on every full run. Only ratios measured in one run are "
        "comparable.", "",
        f"- Machine: {machine_info()}; load average {load_start} at the start, "
        f"{load_average()} at the end; other processes used {others:.2f} cores on average "
        f"during the timed runs; total {(time.time() - started) / 60:.1f} min.",
        f"- Settings: `zoo.small_cnn(width=16)` (28×28×1, random weights) and the {decoder_label} "
        f"on {LATENT_DIM}-d latents (random weights); batch {args.batch_size} of `x = G(w)` with "
        "w ~ N(0, I) and random labels, one batch repeated. Image attack `PGD(eps=4/255, "
        "step_size=1/255, num_steps=5)`, latent attack `LatentPGD(eta=0.02, step_size=0.005, "
        "num_steps=5)` (L∞, random starts, keep-best: the library's defaults); DMAT loss "
        "0.5/0.5, no clean term; SGD(0.01, momentum 0.9, weight decay 1e-4).",
        f"- Timing: after a warm-up (`fit` of 2 steps: traces and compiles), {args.rounds} "
        f"interleaved rounds (order rotated), each timing {args.steps} steps; median per step. "
        "`fit` = `trainer.fit(dataset.repeat(), steps_per_epoch=K, verbose=0)`; `train_function` "
        "calls = the compiled step called K times on an iterator.",
        "- Floor = one `tf.function` per step: 5 classifier forward+backward passes w.r.t. the "
        "image, 5 decoder+classifier forward+backward passes w.r.t. the latent, one decoder "
        "forward, the training forward+backward on the adversarial batch(es) and the SGD "
        "update (sign steps, projection and clipping included; no random start, no keep-best, "
        "no metrics). The strict floor omits the clean forward pass the trainer runs for its "
        "`accuracy` metric; \"floor + clean forward\" counts it.",
        "- Verdicts use " + (f"CPU time (other processes used ≥ {QUIET} cores on average, "
                             "which inflates wall clock)" if loaded else
                             "wall clock (a quiet run)") + ". CPU time is this process's, "
        "all threads.",
        f"- `train_step` traced per trainer: {', '.join(f'{k} {n}×' for k, n in traces.items())}"
        + (" — twice on the first call only (the optimizer creates its variables inside the "
           "first trace, as for any Keras model on TensorFlow without a distribution "
           "strategy, and tf.function traces again); no retracing while timed."
           if set(traces.values()) == {2} else "."), "",
    ]
    lines += table(variants)
    lines += [""] + verdicts(variants, loaded)
    lines += profile_lines(variants, loaded)
    return "\n".join(lines) + "\n"


def main(argv=None):
    started = time.time()
    load_start = load_average()
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    variants, traces, decoder_label = run(args)
    text = section(args, variants, traces, decoder_label, started, load_start)
    print(text)
    if not args.no_write:
        update_section(ROOT / "BENCHMARKS.md", SECTION, text, HEADER)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: DMAT only, batch 32, 2 steps per timing, 1 round; "
                        "no write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timing (K)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (≥ 5)")
    parser.add_argument("--decoder", choices=("vae", "small"), default="vae")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=None,
                        help="a subset of the modes (implies --no-write)")
    parser.add_argument("--profile", action="store_true", help="add the DMAT profile rows")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.rounds, args.no_write = 32, 2, 1, True
        args.modes = args.modes or ["DMAT"]
    if args.modes:
        args.no_write = True
    args.options = " ".join(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    main()
