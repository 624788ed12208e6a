"""Generative adversarial training (GAT, Poursaeed et al. 2021) on Fashion-MNIST, scaled down.

Stages (each cached in `--cache-dir`, default `models/results/gat/`, so a rerun resumes):
1. **Generator**: `zoo.StyleGenerator()` (6 AdaIN layers, 7/14/28 px, 64/32/16 channels) trained
   `--gen-steps` iterations (batch 64) on the Fashion-MNIST training set; wall-clock stated.
   The trained weights (without optimizer state) are written to `style_generator.keras` and,
   when absent, shipped as `manidefense/zoo/weights/style_generator_fashion_mnist.keras`
   (`StyleGenerator.pretrained()`).
2. **Quality**: an independent judge CNN (`zoo.small_cnn(width=32)`, trained on all 60,000
   training images, never attacked) classifies `--quality-n` conditional samples: label
   accuracy per class; a Fréchet distance in the judge's penultimate features (not Inception
   FID; the real-vs-real floor is train vs test images); per layer group, the mean |Δ| and the
   judge's label flips when that group's noise is resampled (z resampling for comparison) and
   the learned noise factors |B|.
3. **Step calibration**: the fraction of correctly classified samples that GAT's attack fools
   within 10 iterations, per layer group, for style and noise at GAT's nominal steps (0.004 /
   0.1) and larger ones.
4. **Tables 1–3** (see `tables` below).
Writes `## gat` of `models/RESULTS.md` and its PNG figures in `models/figures/` (committed).

Usage:
    .venv/bin/python models/gat.py [--gen-steps 4000] [--stage generator|all] [--quick]
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

from _common import cached, log, sign_test  # noqa: E402

import manidefense as md  # noqa: E402

# === 1. Generator ===

def train_generator(x, y, args, cache):
    path = cache / "style_generator.keras"
    info_path = cache / "generator_training.json"
    if path.exists() and info_path.exists():
        return keras.saving.load_model(path), json.loads(info_path.read_text())
    keras.utils.set_random_seed(args.seed)
    gen = md.zoo.StyleGenerator(seed=args.seed)
    gen.compile()
    data = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=args.seed)
            .repeat().batch(64, drop_remainder=True).prefetch(2))
    steps_per_epoch = min(500, args.gen_steps)
    started = time.time()
    history = gen.fit(data, steps_per_epoch=steps_per_epoch,
                      epochs=max(1, args.gen_steps // steps_per_epoch), verbose=0,
                      callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: log(
                          "generator epoch", e, {k: round(float(v), 4) for k, v in logs.items()}))])
    seconds = time.time() - started
    # Save the networks without the three optimizers' state: a ~1.5 MB file.
    plain = md.zoo.StyleGenerator.from_config(gen.get_config())
    plain.set_weights(gen.get_weights())
    plain.save(path)
    info = {"iterations": int(steps_per_epoch * max(1, args.gen_steps // steps_per_epoch)),
            "batch_size": 64, "seconds": seconds,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}
    info_path.write_text(json.dumps(info, indent=1))
    return plain, info


def train_judge(args, cache):
    path = cache / "judge.keras"
    if path.exists():
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(args.seed + 1)
    x, y = md.datasets.load("fashion_mnist", "train", limit=args.judge_size)
    judge = md.zoo.small_cnn(width=32, name="judge")
    judge.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    judge.fit(x, y, batch_size=128, epochs=args.judge_epochs, verbose=0)
    judge.save(path)
    return judge


# === 2. Quality ===

def _predict(model, x):
    return np.argmax(model.predict(x, batch_size=256, verbose=0), -1)


def _features(judge, x):
    penultimate = keras.Model(judge.inputs, judge.layers[-2].output)
    return penultimate.predict(x, batch_size=256, verbose=0).astype(np.float64)


def frechet_distance(a, b):
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    `trace(sqrt(C_a C_b))` is computed as the sum of the square roots of the eigenvalues of
    the symmetric `sqrt(C_a) C_b sqrt(C_a)` (no scipy needed)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sum(np.sqrt(np.clip(middle, 0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * trace_root)


def _samples(gen, labels, seed, batch=500):
    styles, noises, images = [], [], []
    for i, start in enumerate(range(0, len(labels), batch)):
        s, n, im = gen.sample(labels[start:start + batch], seed=seed + i)
        styles.append([np.asarray(t) for t in s])
        noises.append([np.asarray(t) for t in n])
        images.append(np.asarray(im))
    join = lambda parts: [np.concatenate([p[k] for p in parts])  # noqa: E731
                          for k in range(len(parts[0]))]
    return join(styles), join(noises), np.concatenate(images)


def generator_quality(gen, judge, args):
    xt, yt = md.datasets.load("fashion_mnist", "test")
    xr, _ = md.datasets.load("fashion_mnist", "train", limit=args.quality_n)
    judge_acc = float(np.mean(_predict(judge, xt) == yt))
    labels = np.arange(args.quality_n) % 10
    styles, noises, images = _samples(gen, labels, seed=1000)
    predicted = _predict(judge, images)
    per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(10)]
    fake_f, test_f, train_f = (_features(judge, a) for a in (images, xt[:args.quality_n], xr))
    result = {"judge_test_accuracy": judge_acc,
              "label_accuracy": float(np.mean(predicted == labels)),
              "label_accuracy_per_class": per_class,
              "frechet_judge_features": frechet_distance(fake_f, test_f),
              "frechet_floor_train_vs_test": frechet_distance(train_f, test_f),
              "num_samples": int(args.quality_n)}
    # Noise use per layer group (and z resampling at the same label for comparison).
    n = min(2000, args.quality_n)
    base = images[:n]
    base_pred = predicted[:n]
    resample = {}
    fresh = gen.random_noise(n, seed=77)
    for g, group in enumerate(gen.layer_groups):
        new_noises = [np.asarray(fresh[i]) if i in group else noises[i][:n]
                      for i in range(gen.num_layers)]
        out = np.asarray(gen.synthesize([s[:n] for s in styles], new_noises))
        resample[f"noise_group_{g}"] = _change(out, base, judge, base_pred)
    out = np.asarray(gen.synthesize([s[:n] for s in styles], [np.asarray(f) for f in fresh]))
    resample["noise_all"] = _change(out, base, judge, base_pred)
    _, _, other = _samples(gen, labels[:n], seed=5000)
    resample["z_and_noise"] = _change(other, base, judge, base_pred)
    result["resampling"] = resample
    result["noise_strength_mean_abs"] = [
        float(np.mean(np.abs(np.asarray(gen.synthesis.get_layer(f"noise_injection_{i}")
                                        .noise_strength))))
        for i in range(gen.num_layers)]
    result["style_std"] = [float(np.std(s)) for s in styles]
    return result


def _change(images, base, judge, base_pred):
    flips = _predict(judge, images) != base_pred
    return {"mean_abs_change": float(np.mean(np.abs(images - base))),
            "label_flip_rate": float(np.mean(flips))}


# === 3. Step calibration ===

STYLE_STEPS = [0.004, 0.01, 0.02, 0.05]
NOISE_STEPS = [0.1, 0.2, 0.5]
TABLE2 = ["pgd-linf", "pgd-l2", "fog", "snow", "gabor", "elastic", "jpeg-linf", "spatial"]
CORRUPTIONS = ["fog", "snow", "gabor", "elastic", "jpeg", "spatial"]


def fool_rates(gen, model, attack_kwargs, n, seed, groups=True):
    """Fraction of correctly classified generator samples fooled within the cap, per layer
    group and with all layers; also the mean iterations of the fooled ones."""
    labels = np.arange(n) % 10
    styles, noises, images = _samples(gen, labels, seed=seed)
    ok = _predict(model, images) == labels
    latents = ([s[ok] for s in styles], [v[ok] for v in noises])
    out = {}
    chosen = list(enumerate(gen.layer_groups)) if groups else []
    for key, layers in [(f"group_{g}", layers) for g, layers in chosen] + [("all", None)]:
        attack = md.attacks.GenerativeAttack(gen, layers=layers, **attack_kwargs)
        result = attack(model, latents, labels[ok])
        out[key] = {"fooled": float(result.success.mean()),
                    "mean_iterations": float(result.iterations[result.success].mean())
                    if result.success.any() else None,
                    "iterations_histogram": np.bincount(
                        result.iterations[result.success],
                        minlength=attack.max_iterations + 1).tolist()}
    out["clean_accuracy_on_samples"] = float(ok.mean())
    return out


def calibrate_steps(gen, model, args):
    table = {}
    for step in STYLE_STEPS:
        table[f"style {step}"] = fool_rates(gen, model, dict(perturb="style", style_step=step),
                                            args.calib_n, seed=2000)
        log("calibration style", step, {k: v["fooled"] for k, v in table[f"style {step}"]
                                         .items() if isinstance(v, dict)})
    for step in NOISE_STEPS:
        table[f"noise {step}"] = fool_rates(gen, model, dict(perturb="noise", noise_step=step),
                                            args.calib_n, seed=2000)
        log("calibration noise", step, {k: v["fooled"] for k, v in table[f"noise {step}"]
                                         .items() if isinstance(v, dict)})
    return table


def chosen_steps(calibration, floor=0.3):
    """The smallest step of each kind whose mean fooling rate over the layer groups reaches
    `floor` (GAT's samples must fool within 10 iterations, so too small a step keeps few)."""
    steps = {}
    for kind, grid in (("style", STYLE_STEPS), ("noise", NOISE_STEPS)):
        steps[kind] = grid[-1]
        for step in grid:
            entry = calibration[f"{kind} {step}"]
            rates = [v["fooled"] for k, v in entry.items() if k.startswith("group_")]
            if np.mean(rates) >= floor:
                steps[kind] = step
                break
    return steps


# === 4. Classifiers ===

def _train_subset(args):
    return md.datasets.load("fashion_mnist", "train", limit=args.train_size)


def baseline(name, args, cache):
    """The normal and PGD-L∞ (16/255) small CNNs of models/unforeseen.py (same data, epochs
    and seed), reused from its cache when present, else trained the same way."""
    for folder in (cache, ROOT / "models" / "results" / "unforeseen"):
        if (folder / f"{name}.keras").exists():
            return keras.saving.load_model(folder / f"{name}.keras")
    keras.utils.set_random_seed(args.seed)
    x, y = _train_subset(args)
    classifier = md.zoo.small_cnn((28, 28, 1), 10, width=16)
    if name == "normal":
        model = classifier
        model.compile(keras.optimizers.Adam(args.lr),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        attack = md.attacks.PGD(eps=16 / 255, num_steps=5, seed=args.seed)
        model = md.training.DualManifoldTrainer(classifier, image_attack=attack,
                                                latent_attack=None, seed=args.seed)
        model.compile(keras.optimizers.Adam(args.lr))
    model.fit(x, y, epochs=args.epochs, batch_size=128, verbose=0)
    classifier.save(cache / f"{name}.keras")
    return classifier


def train_gat(gen, steps, args, cache, name="gat", layer_groups=None):
    path, info_path = cache / f"{name}.keras", cache / f"{name}_training.json"
    if path.exists() and info_path.exists():
        return keras.saving.load_model(path), json.loads(info_path.read_text())
    keras.utils.set_random_seed(args.seed)
    x, y = _train_subset(args)
    classifier = md.zoo.small_cnn((28, 28, 1), 10, width=16)
    attack = md.attacks.GenerativeAttack(gen, style_step=steps["style"],
                                         noise_step=steps["noise"])
    trainer = md.training.GenerativeAdversarialTrainer(classifier, attack=attack,
                                                       layer_groups=layer_groups,
                                                       max_iterations=10, seed=args.seed)
    trainer.compile(keras.optimizers.Adam(args.lr))
    began = time.time()
    history = trainer.fit(x, y, epochs=args.epochs, batch_size=128, verbose=0)
    info = {"seconds": time.time() - began, "steps": steps,
            "layer_groups": [list(g) for g in trainer.layer_groups],
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}
    log(name, "trained", json.dumps(info))
    classifier.save(path)
    info_path.write_text(json.dumps(info, indent=1))
    return classifier, info


# === 5. Tables ===

def table1(gen, model, steps, args):
    xt, yt = md.datasets.load("fashion_mnist", "test")
    clean = _predict(model, xt) == yt
    kwargs = dict(style_step=steps["style"], noise_step=steps["noise"])
    labels = np.arange(args.gat_n) % 10
    styles, noises, images = _samples(gen, labels, seed=3000)
    rows = {"clean_test_accuracy": float(clean.mean()),
            "clean_correct": clean.tolist(),
            "generated_accuracy": float(np.mean(_predict(model, images) == labels))}
    for key, layers in [(f"group_{g}", grp) for g, grp in enumerate(gen.layer_groups)] + \
            [("all", None)]:
        for cap in ((10, 50) if layers is None else (10,)):
            attack = md.attacks.GenerativeAttack(gen, layers=layers, max_iterations=cap,
                                                 **kwargs)
            result = attack(model, (styles, noises), labels)
            rows[f"{key}@{cap}"] = float(1.0 - result.success.mean())
    log("table 1", model.name, {k: v for k, v in rows.items() if k != "clean_correct"})
    return rows


def table2(model, args):
    xt, yt = md.datasets.load("fashion_mnist", "test", limit=args.n)
    from manidefense.evaluation import uar as uar_lib
    from manidefense.evaluation.presets import make_unforeseen, medium_eps

    rows = {"clean": (_predict(model, xt) == yt).tolist()}
    for attack_name in TABLE2:
        if attack_name == "spatial":
            attack = make_unforeseen("spatial", (28, 28, 1), seed=args.seed)
        else:
            attack = uar_lib.uar_attack(attack_name, medium_eps(attack_name, (28, 28, 1)),
                                        num_steps=args.eval_steps, seed=args.seed)
        rows[attack_name] = (_predict(model, attack(model, xt, yt)) == yt).tolist()
    log("table 2", model.name, {k: round(float(np.mean(v)), 3) for k, v in rows.items()})
    return rows


def table3(model, args):
    xt, yt = md.datasets.load("fashion_mnist", "test", limit=args.n_corrupt)
    rows = {"clean": (_predict(model, xt) == yt).tolist()}
    for kind in CORRUPTIONS:
        for severity in (1, 3, 5):
            shifted = md.attacks.corrupt(xt, kind, severity, seed=args.seed)
            rows[f"{kind}-{severity}"] = (_predict(model, shifted) == yt).tolist()
    log("table 3", model.name, {k: round(float(np.mean(v)), 3) for k, v in rows.items()})
    return rows


# === Realism ===

def realism(gen, judge, model, steps, args):
    """Are GAT's examples still images of their label? On `--calib-n` samples the normal CNN
    classifies correctly, per perturbation and layer group at the training steps: the fooled
    fraction, the mean |Δx| and mean signed Δx (brightness) of the fooled examples, and how
    often the independent judge still gives the label (vs on the same samples unattacked)."""
    labels = np.arange(args.calib_n) % 10
    styles, noises, images = _samples(gen, labels, seed=8000)
    ok = _predict(model, images) == labels
    latents = ([s[ok] for s in styles], [v[ok] for v in noises])
    labels, images = labels[ok], images[ok]
    judge_clean = _predict(judge, images) == labels
    out = {}
    for perturb in ("style", "noise"):
        for key, layers in [(f"group_{g}", grp) for g, grp in enumerate(gen.layer_groups)] + \
                [("all", None)]:
            attack = md.attacks.GenerativeAttack(gen, perturb=perturb, layers=layers,
                                                 style_step=steps["style"],
                                                 noise_step=steps["noise"])
            result = attack(model, latents, labels)
            fooled = result.success
            delta = (result.images - images)[fooled]
            out[f"{perturb} {key}"] = {
                "fooled": float(fooled.mean()),
                "mean_abs_change": float(np.abs(delta).mean()) if fooled.any() else None,
                "mean_signed_change": float(delta.mean()) if fooled.any() else None,
                "judge_keeps_label": float(np.mean(
                    _predict(judge, result.images[fooled]) == labels[fooled]))
                if fooled.any() else None,
                "judge_on_same_clean": float(judge_clean[fooled].mean())
                if fooled.any() else None}
    return out


# === Figures ===

def figures(gen, models, steps, cache):
    """Fig. 3 analogue on the normal model (style per group, noise per group) and the histogram
    of iterations (all layers) for each model."""
    names = md.datasets.class_names("fashion_mnist")
    model = models["normal"]
    # Eight samples the normal CNN classifies correctly, of different classes where possible.
    candidates = np.arange(80) % 10
    styles, noises, images = gen.sample(candidates, seed=6000)
    right = np.flatnonzero(_predict(model, np.asarray(images)) == candidates)
    first = [right[candidates[right] == c][0] for c in range(10) if np.any(candidates[right] == c)]
    pick = np.array((first + [i for i in right if i not in first])[:8])
    labels = candidates[pick]
    styles = [np.asarray(t)[pick] for t in styles]
    noises = [np.asarray(t)[pick] for t in noises]
    images = np.asarray(images)[pick]
    rows, predictions = {}, {"original": _predict(model, np.asarray(images))}
    for kind in ("style", "noise"):
        for layers in gen.layer_groups:
            attack = md.attacks.GenerativeAttack(
                gen, perturb=kind, layers=layers, style_step=steps["style"],
                noise_step=steps["noise"])
            title = f"{kind}, layers {layers[0]}–{layers[-1]}"
            rows[title] = attack(model, (styles, noises), labels)
            predictions[title] = _predict(model, rows[title].images)
    axes = md.visualization.plot_generative_examples(
        np.asarray(images), rows, predictions=predictions, labels=labels, class_names=names)
    axes.flat[0].figure.savefig(cache / "gat_examples.png", dpi=80)
    n = 500
    lab = np.arange(n) % 10
    s, v, _ = _samples(gen, lab, seed=7000)
    attack = md.attacks.GenerativeAttack(gen, style_step=steps["style"],
                                         noise_step=steps["noise"])
    ax = md.visualization.plot_iterations_histogram(
        {name: attack(m, (s, v), lab) for name, m in models.items()},
        title="Iterations to fool (style and noise, all layers)")
    ax.figure.savefig(cache / "gat_iterations.png", dpi=80)


# === Report ===

def sample_grid(gen, path, per_class=10):
    """A per-class grid of conditional samples (rows = classes)."""
    from matplotlib.figure import Figure

    labels = np.repeat(np.arange(10), per_class)
    _, _, images = gen.sample(labels, seed=4242)
    images = np.asarray(images)
    names = md.datasets.class_names("fashion_mnist")
    fig = Figure(figsize=(per_class * 0.8, 10 * 0.85))
    axes = fig.subplots(10, per_class)
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i % per_class == 0:
            ax.set_ylabel(names[i // per_class], fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=80)


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def render(quality, info, calibration, steps, gat_info, t1, t2, t3, real, args, cache,
           figures_dir):
    from manidefense._markdown import update_section

    rel = os.path.relpath(figures_dir, ROOT / "models")
    names = md.datasets.class_names("fashion_mnist")
    lines = ["## gat", "",
             "Generative adversarial training (Poursaeed et al., ICCV 2021) on Fashion-MNIST, "
             "scaled to 2 CPU cores by `models/gat.py`.", "",
             "### The generator", "",
             f"`zoo.StyleGenerator()` (6 AdaIN layers at 7, 7, 14, 14, 28, 28 px with 64/32/16 "
             f"channels; 448 style and 2,058 noise values per image; noise factors B initialised "
             f"at 0 in layers 0–1 and 0.1 elsewhere), {info['iterations']} iterations of batch 64 "
             f"({info['iterations'] * 64 / 60000:.1f} epochs) in "
             f"**{info['seconds'] / 60:.1f} min** on this machine.", "",
             f"Judged by an independent `small_cnn(width=32)` (test accuracy "
             f"{_pct(quality['judge_test_accuracy'])}%), on {quality['num_samples']} conditional "
             f"samples: **label accuracy {_pct(quality['label_accuracy'])}%**; Fréchet distance "
             f"in the judge's penultimate features (not Inception FID) "
             f"**{quality['frechet_judge_features']:.2f}** against a real-vs-real floor (train vs "
             f"test images) of {quality['frechet_floor_train_vs_test']:.2f}.", "",
             "| class | " + " | ".join(names) + " |", "|---" * 11 + "|",
             "| label accuracy % | " + " | ".join(
                 _pct(v) for v in quality["label_accuracy_per_class"]) + " |", "",
             "Noise use — resampling one group's noise (z, labels and other noise fixed), mean "
             "|Δ| in [0, 1] pixels and the judge's label flips:", "",
             "| resampled | mean abs change | label flips % |", "|---|---|---|"]
    for key, row in quality["resampling"].items():
        title = {"noise_group_0": "noise, layers 0–1 (7 px)",
                 "noise_group_1": "noise, layers 2–3 (14 px)",
                 "noise_group_2": "noise, layers 4–5 (28 px)", "noise_all": "all noise",
                 "z_and_noise": "z and all noise (new sample)"}.get(key, key)
        lines.append(f"| {title} | {row['mean_abs_change']:.3f} | "
                     f"{_pct(row['label_flip_rate'])} |")
    lines += ["", "Learned |B| per layer: " + ", ".join(
        f"{v:.3f}" for v in quality["noise_strength_mean_abs"]) + ".", "",
        f"![conditional samples, one row per class]({rel}/gat_samples.png)", "",
        "### Attack step calibration", "",
        f"Fraction of the normal CNN's correctly classified generator samples "
        f"({args.calib_n} drawn) fooled within 10 iterations (least-likely direction):", "",
        "| perturb, step | layers 0–1 | layers 2–3 | layers 4–5 | all layers | mean iterations "
        "(all) |", "|---|---|---|---|---|---|"]
    for key, entry in calibration.items():
        lines.append(f"| {key} | " + " | ".join(
            _pct(entry[k]["fooled"]) for k in ("group_0", "group_1", "group_2", "all"))
            + f" | {entry['all']['mean_iterations'] or 0:.1f} |")
    lines += ["", f"Training steps (smallest with a mean fooling rate over the groups ≥ 30%): "
              f"style {steps['style']}, noise {steps['noise']} (GAT's nominal: 0.004 / 0.1).", ""]
    lines += ["Realism at the training steps — the normal CNN's correctly classified samples "
              "attacked per perturbation and layer group; for the fooled ones: mean |Δx|, mean "
              "signed Δx (negative = darker) and how often the independent judge still gives "
              "the conditioning label (on the same samples unattacked, for comparison):", "",
              "| perturb, layers | fooled % | mean abs Δx | mean signed Δx | judge keeps label % "
              "| judge on them unattacked % |", "|---|---|---|---|---|---|"]
    group_names = {"group_0": "0–1", "group_1": "2–3", "group_2": "4–5", "all": "all"}
    for key, r in real.items():
        perturb, group = key.split(" ")
        signed = "–" if r["mean_signed_change"] is None else f"{r['mean_signed_change']:+.3f}"
        size = "–" if r["mean_abs_change"] is None else f"{r['mean_abs_change']:.3f}"
        lines.append(f"| {perturb}, {group_names[group]} | {_pct(r['fooled'])} | {size} | "
                     f"{signed} | {_pct(r['judge_keeps_label'])} | "
                     f"{_pct(r['judge_on_same_clean'])} |")
    lines += [""]
    lines += [f"![GAT examples on the normal CNN: style and noise per layer group]"
              f"({rel}/gat_examples.png)", "",
              f"![iterations needed to fool each model]({rel}/gat_iterations.png)", ""]
    h = gat_info["history"]
    lines += ["### Training", "",
              f"Three `small_cnn(width=16)` on the first {args.train_size} training images, "
              f"{args.epochs} epochs, batch 128, Adam {args.lr}, seed {args.seed}: **Normal** and "
              "**PGD-AT** (L∞ 16/255, 5 steps) as in `models/unforeseen.py` (shared), and "
              "**GAT**: `GenerativeAdversarialTrainer` (style and noise, one layer group per "
              "batch, max 10 iterations, 128 clean + 128 kept adversarial images per batch) in "
              f"{gat_info['seconds'] / 60:.1f} min. Per epoch: kept fraction "
              + ", ".join(_pct(v) for v in h["kept_fraction"]) + "%, mean iterations "
              + ", ".join(f"{v:.2f}" for v in h["mean_iterations"]) + ".",
              ""]
    variant = cache / "gat-coarse_training.json"
    if variant.exists():
        hv = json.loads(variant.read_text())
        lines += ["**GAT-coarse** is the same without the fine group (layer groups 0–1 and 2–3 "
                  "only), tried after the realism table above showed the fine group's style "
                  f"steps mostly darkening the garment; {hv['seconds'] / 60:.1f} min, kept "
                  "fraction " + ", ".join(_pct(v) for v in hv["history"]["kept_fraction"])
                  + "%.", ""]
    models = list(t1)
    lines += ["### Table 1 — clean and GAT-adversarial accuracy", "",
              f"Clean: the 10,000 test images. Adversarial: {args.gat_n} fresh generator samples "
              "(balanced labels, seed unseen in training) attacked white-box on each model with "
              "the training steps; accuracy = not fooled within the cap (10, and 50 iterations).",
              "",
              "| model | clean test | generated (clean) | layers 0–1 @10 | layers 2–3 @10 | "
              "layers 4–5 @10 | all @10 | all @50 |", "|---|---|---|---|---|---|---|---|"]
    for name in models:
        r = t1[name]
        lines.append(f"| {name} | {_pct(r['clean_test_accuracy'])} | "
                     f"{_pct(r['generated_accuracy'])} | " + " | ".join(
                         _pct(r[k]) for k in ("group_0@10", "group_1@10", "group_2@10",
                                              "all@10", "all@50")) + " |")
    p, a, b = sign_test(t1["gat"]["clean_correct"], t1["normal"]["clean_correct"])
    lines += ["", f"Clean accuracy, GAT vs Normal (paired sign test on the 10,000 test images): "
              f"{a} only GAT right, {b} only Normal right, p = {p:.2g}.", ""]
    lines += ["### Table 2 — unforeseen attacks", "",
              f"First {args.n} test images; untargeted attacks at the calibrated medium eps "
              f"(28×28×1 table), {args.eval_steps} steps; spatial = grid search. "
              "Mean over the attacks each model was not trained against (PGD-AT: all but "
              "pgd-linf; Normal and GAT: all of them).", "",
              "| model | clean | " + " | ".join(TABLE2) + " | mean unseen |",
              "|---" * (len(TABLE2) + 3) + "|"]
    for name in models:
        r = {k: float(np.mean(v)) for k, v in t2[name].items()}
        unseen = [r[k] for k in TABLE2 if not (name == "pgd-at" and k == "pgd-linf")]
        lines.append(f"| {name} | {_pct(r['clean'])} | " + " | ".join(
            _pct(r[k]) for k in TABLE2) + f" | {_pct(np.mean(unseen))} |")
    lines += ["", "### Table 3 — shifted test sets (corruptions at fixed strength)", "",
              f"First {args.n_corrupt} test images through `attacks.corrupt(kind, severity)` "
              "(random, not optimised); mean over the six kinds at each severity.", "",
              "| model | clean | " + " | ".join(f"{k}-3" for k in CORRUPTIONS)
              + " | mean sev. 1 | mean sev. 3 | mean sev. 5 |",
              "|---" * (len(CORRUPTIONS) + 5) + "|"]
    for name in models:
        r = {k: float(np.mean(v)) for k, v in t3[name].items()}
        means = [np.mean([r[f"{k}-{s}"] for k in CORRUPTIONS]) for s in (1, 3, 5)]
        lines.append(f"| {name} | {_pct(r['clean'])} | " + " | ".join(
            _pct(r[f"{k}-3"]) for k in CORRUPTIONS) + " | "
            + " | ".join(_pct(m) for m in means) + " |")
    pooled = lambda t, m: np.concatenate([t[m][f"{k}-3"] for k in CORRUPTIONS])  # noqa: E731
    p, a, b = sign_test(pooled(t3, "gat"), pooled(t3, "normal"))
    lines += ["", f"Severity 3 pooled over kinds, GAT vs Normal (paired sign test): {a} only "
              f"GAT right, {b} only Normal right, p = {p:.2g}.", ""]
    target = cache / "RESULTS.md" if args.quick else ROOT / "models" / "RESULTS.md"
    update_section(target, "gat", "\n".join(lines) + "\n",
                   "# Results of the recipes in models/\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gen-steps", type=int, default=4000)
    parser.add_argument("--judge-size", type=int, default=60000)
    parser.add_argument("--judge-epochs", type=int, default=2)
    parser.add_argument("--quality-n", type=int, default=10000)
    parser.add_argument("--stage", choices=("generator", "all"), default="all")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--calib-n", type=int, default=300)
    parser.add_argument("--gat-n", type=int, default=1000)
    parser.add_argument("--n", type=int, default=500, help="test images for Table 2")
    parser.add_argument("--n-corrupt", type=int, default=2000)
    parser.add_argument("--eval-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--cache-dir", default=str(ROOT / "models" / "results" / "gat"))
    args = parser.parse_args(argv)
    cache = Path(args.cache_dir)
    if args.quick:
        args.gen_steps, args.judge_size, args.judge_epochs, args.quality_n = 20, 600, 1, 200
        args.train_size, args.epochs, args.calib_n, args.gat_n, args.n, args.n_corrupt, \
            args.eval_steps = 256, 1, 40, 40, 40, 100, 3
        cache = cache / "quick"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    x, y = md.datasets.load("fashion_mnist", "train")
    gen, info = train_generator(x, y, args, cache)
    shipped = ROOT / "manidefense" / "zoo" / "weights" / "style_generator_fashion_mnist.keras"
    if not args.quick and not shipped.exists():
        shutil.copyfile(cache / "style_generator.keras", shipped)  # StyleGenerator.pretrained()
    log("generator trained", info["iterations"], "iterations in", f"{info['seconds']:.0f} s")
    judge = train_judge(args, cache)
    quality = cached(cache / "quality.json", lambda: generator_quality(gen, judge, args))
    log("quality", json.dumps(quality))
    if args.stage == "generator":
        return
    normal = baseline("normal", args, cache)
    calibration = cached(cache / "calibration.json", lambda: calibrate_steps(gen, normal, args))
    steps = chosen_steps(calibration)
    log("training steps", steps)
    models = {"normal": normal, "pgd-at": baseline("pgd-linf", args, cache)}
    models["gat"], gat_info = train_gat(gen, steps, args, cache)
    # A variant without the fine (28 px) group, whose style steps mostly darken the garment.
    models["gat-coarse"], _ = train_gat(gen, steps, args, cache, name="gat-coarse",
                                        layer_groups=gen.layer_groups[:-1])
    t1, t2, t3 = {}, {}, {}
    for name, model in models.items():
        t1[name] = cached(cache / f"table1_{name}.json",
                          lambda model=model: table1(gen, model, steps, args))
        t2[name] = cached(cache / f"table2_{name}.json", lambda model=model: table2(model, args))
        t3[name] = cached(cache / f"table3_{name}.json", lambda model=model: table3(model, args))
    real = cached(cache / "realism.json", lambda: realism(gen, judge, normal, steps, args))
    # Figures are committed (models/figures/) so RESULTS.md shows them; quick runs keep theirs.
    figures_dir = cache if args.quick else ROOT / "models" / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    if not (figures_dir / "gat_samples.png").exists():
        sample_grid(gen, figures_dir / "gat_samples.png")
    if not (figures_dir / "gat_examples.png").exists():
        figures(gen, models, steps, figures_dir)
    render(quality, info, calibration, steps, gat_info, t1, t2, t3, real, args, cache,
           figures_dir)
    log("done in", f"{(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
