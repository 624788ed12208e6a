"""DMAT (Lin et al., NeurIPS 2020) on OM-Fashion-MNIST: Normal, AT, OM-AT and DMAT (Table 1).

1. Generator: the VAE of `models/generators.py` (`zoo.generators.VAE`, latent_dim 16), loaded
   from `--vae` (the script waits up to `--wait-minutes` for it; it never trains it).
2. OM-Fashion-MNIST: the first `--train-size` + `--n-cal` training images and the first
   `--n-test` test images projected onto the decoder with `build_on_manifold_dataset`
   (encoder start, `--proj-steps` Adam steps, d = mean L1 + (1 - SSIM)); the on-manifold
   images are exactly G(w). The mean per-pixel L1 |G(w) - x| and the mean SSIM term 1 - SSIM
   are reported at the encoder start and after the projection. The last `--n-cal` projected
   training images are held out of training: the latent budget is calibrated on them.
3. Normal training first; then the latent L∞ budget η, fixed BEFORE any robust model is
   trained, by the rule: the smallest η of the grid at which OM-PGD-50 brings the Normal model
   on the calibration images to at most `--tolerance` above the accuracy PGD-50 (L∞ 0.1)
   leaves it (the authors' η = 0.02 on StyleGAN's W+ did this: 0.26 % vs 0.00 % on
   OM-ImageNet), capped at `--max-eta` = 0.3: the largest η of the grid at which G(w_adv) in
   the saved PNG (G(w) and G(w_adv) per η tried) still showed the class of G(w), judged by
   eye on the VAE of models/generators.py before any robust model was trained (at 0.5 bags
   turned into boots and sandals into closed shoes: a 16-d VAE's classes are close in L∞).
4. `zoo.small_cnn(width=16)` (logits) trained by `DualManifoldTrainer` on the on-manifold
   training set, all with the same Adam one-cycle schedule, epochs and batch: Normal,
   AT [PGD-5], OM-AT [OM-PGD-5], DMAT [PGD-5, OM-PGD-5] (no clean term, 0.5/0.5, as the
   authors), and with `--trades` TRADES [PGD-5] and DMAT + TRADES (β = 6). Image L∞ ε = 0.1
   (the library's Fashion-MNIST threat; the authors' 4/255 was for 256-px ImageNet), PGD-5
   step 2.5·ε/5, random start; OM-PGD-5 at η with step 2.5·η/5, random start.
5. On the first `--n` on-manifold test images: Standard, FGSM, PGD-50, MI-FGSM-50, the
   per-example worst case over the three, and OM-PGD-50 (`LatentPGD`, 50 steps of 2.5·η/50);
   on the natural originals of the same images (Table 4): Standard and PGD-50. 95 %
   Clopper-Pearson intervals.
Writes `## dmat` of `models/RESULTS.md` and caches everything (on-manifold `.npz`, trained
classifiers `.keras`, `dmat.json`, the η grid PNG) in `--cache-dir` (default
`models/results/dmat/`, ignored by git).

Scaled down for 2 shared CPU cores (the authors: OM-ImageNet, 256-px StyleGAN, ResNet-50,
20 epochs of SGD): a 16-d VAE instead of StyleGAN, projection with few Adam steps and SSIM
instead of 1000 steps and a VGG perceptual loss, 10,000 training images, a small CNN and few
epochs. `--quick` trains a tiny VAE inline for a few seconds, runs every stage on tiny sizes,
caches under `--cache-dir/quick/` and writes nothing to RESULTS.md; `--from-json` re-renders
the section from `dmat.json`.

Usage:
    .venv/bin/python models/dmat.py [--train-size 10000] [--epochs 2] [--n 1000] [--trades]
        [--eta ETA] [--quick] [--from-json] [--cache-dir DIR]
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402 - models/_common.py, next to this script
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense._markdown import update_section  # noqa: E402
from manidefense.attacks import FGSM, MIFGSM, PGD, LatentPGD  # noqa: E402
from manidefense.manifold.projection import (  # noqa: E402
    OnManifoldData,
    build_on_manifold_dataset,
)
from manidefense.stats import clopper_pearson  # noqa: E402
from manidefense.training import DualManifoldTrainer  # noqa: E402
from manidefense.zoo.generators import VAE  # noqa: E402 - registers the class for loading

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.1  # image L∞ budget (Fashion-MNIST)
TRAIN_STEPS = 5  # PGD-5 / OM-PGD-5 during training
BATCH = 128
ATTACK_BATCH = 128  # the fastest batch per image on 2 cores (research/performance-notes.md)
ETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
QUICK_ETAS = (0.3, 1.0)
MODES = ("normal", "at", "om_at", "dmat", "trades", "dmat_trades")
TITLES = {"normal": "Normal training", "at": "AT [PGD-5]", "om_at": "OM-AT [OM-PGD-5]",
          "dmat": "DMAT [PGD-5, OM-PGD-5]", "trades": "TRADES [PGD-5]",
          "dmat_trades": "DMAT + TRADES [PGD-5, OM-PGD-5]"}
IMAGE_MODES = ("at", "dmat", "trades", "dmat_trades")
LATENT_MODES = ("om_at", "dmat", "dmat_trades")
OM_COLUMNS = ("standard", "fgsm", "pgd", "mifgsm", "worst", "om_pgd")
NATURAL_COLUMNS = ("natural", "natural_pgd")
# The paper's numbers (OM-ImageNet, ResNet-50, ε = 4/255, η = 0.02), in %.
PAPER_T1 = {"normal": (74.72, 2.59, 0.00, 0.00, 0.00, 0.26),
            "at": (73.31, 48.02, 38.88, 39.21, 38.80, 7.23),
            "om_at": (78.10, 21.68, 0.25, 0.12, 0.10, 27.53),
            "dmat": (77.96, 49.12, 37.86, 37.65, 36.66, 20.53)}
PAPER_T3 = {"trades": (69.88, 46.06, 8.92), "dmat_trades": (73.17, 42.57, 26.82)}
PAPER_T4 = {"normal": (67.21, 0.00), "at": (71.08, 37.32), "om_at": (73.88, 0.35),
            "dmat": (74.72, 34.63)}
STARTED = time.time()
LOADS = []  # 1-minute load averages of the machine, sampled at every log line


def log(message):
    LOADS.append(os.getloadavg()[0])
    print(f"[{(time.time() - STARTED) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


def cpu():
    """CPU seconds of this process, all threads (independent of other jobs' load)."""
    return time.process_time()


# --- generator and on-manifold data ----------------------------------------------------------

def load_generator(args):
    """The trained VAE (waiting for models/generators.py to write it), or in `--quick` a tiny
    VAE trained inline for a few seconds. Returns `(vae, record)`."""
    if args.quick:
        x, _ = md.datasets.load("fashion_mnist", "train", limit=2048)
        keras.utils.set_random_seed(args.seed)
        vae = VAE(latent_dim=16, width=8, seed=args.seed)
        vae.compile(optimizer=keras.optimizers.Adam(2e-3))
        began = time.time()
        vae.fit(x, epochs=2, batch_size=BATCH, verbose=0)
        return vae, {"source": "tiny inline VAE (--quick)", "tag": "quick", "epochs": 2,
                     "config": {"latent_dim": 16, "width": 8},
                     "train_images": len(x), "seconds": time.time() - began}
    path = Path(args.vae)
    record_path = path.with_suffix(".json")  # written after the model: the model is complete
    deadline, last_note = time.time() + 60 * args.wait_minutes, 0.0
    while not (path.exists() and record_path.exists()):
        if time.time() > deadline:
            raise SystemExit(f"{path} (and {record_path.name}) did not appear within "
                             f"{args.wait_minutes} min: run models/generators.py first")
        if time.time() - last_note > 300:
            log(f"waiting for {path} (written by models/generators.py)")
            last_note = time.time()
        time.sleep(30)
    vae = keras.saving.load_model(path)
    record = json.loads(record_path.read_text())
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:8]
    log(f"VAE loaded from {path} (sha1 {digest})")
    return vae, {"source": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
                 "tag": digest, "epochs": record.get("epochs"),
                 "train_images": record.get("train_images"), "seconds": record.get("seconds"),
                 "config": record.get("config")}


def fit_statistics(images, originals, batch=500):
    """Mean per-pixel L1 |G(w) - x| and mean SSIM term 1 - SSIM (the two parts of d)."""
    l1, ssim = [], []
    for i in range(0, len(images), batch):
        a = ops.convert_to_tensor(images[i:i + batch])
        b = ops.convert_to_tensor(originals[i:i + batch])
        l1.append(np.abs(images[i:i + batch] - originals[i:i + batch]).reshape(
            len(a), -1).mean(1))
        ssim.append(np.maximum(1.0 - ops.convert_to_numpy(
            ops.image.ssim(a, b, max_val=1.0)), 0.0))
    return {"l1": float(np.concatenate(l1).mean()), "ssim_term": float(np.concatenate(ssim).mean())}


def decode(decoder, w, batch=500):
    return np.concatenate([ops.convert_to_numpy(decoder(w[i:i + batch], training=False))
                           for i in range(0, len(w), batch)]).astype(np.float32)


def encode(encoder, x, batch=500):
    return np.concatenate([ops.convert_to_numpy(encoder(x[i:i + batch], training=False)[0])
                           for i in range(0, len(x), batch)]).astype(np.float32)


def on_manifold(vae, split, size, args, cache):
    """The projected split (cached as .npz) and its statistics (start vs projected)."""
    stem = f"om_{split}_{size}_k{args.proj_steps}_lr{args.proj_lr:g}_{args.vae_tag}"
    stem = stem.replace(".", "p")
    path, stats_path = cache / f"{stem}.npz", cache / f"{stem}.json"
    if path.exists() and stats_path.exists():
        log(f"OM-{split}: loaded {path.name}")
        return OnManifoldData.load(path), json.loads(stats_path.read_text())
    x, y = md.datasets.load("fashion_mnist", split, limit=size)
    log(f"OM-{split}: projecting {len(x)} images ({args.proj_steps} Adam steps)")
    began, began_cpu = time.time(), cpu()
    om = build_on_manifold_dataset(vae.decoder, x, y, encoder=vae.encoder,
                                   num_steps=args.proj_steps, learning_rate=args.proj_lr,
                                   batch_size=args.proj_batch)
    seconds, cpu_seconds = time.time() - began, cpu() - began_cpu
    w0 = encode(vae.encoder, x)
    g0 = decode(vae.decoder, w0)
    l1_start = np.abs(g0 - x).reshape(len(x), -1).mean(1)
    l1_projected = np.abs(om.images - x).reshape(len(x), -1).mean(1)
    start = fit_statistics(g0, x)
    stats = {"images": len(x), "seconds": seconds, "cpu_seconds": cpu_seconds, "start": start,
             "projected": fit_statistics(om.images, om.originals),
             "improved": float(np.mean(l1_projected < l1_start)),
             "latent_shift": float(np.abs(om.latents - w0).mean())}
    om.save(path)
    stats_path.write_text(json.dumps(stats, indent=1))
    log(f"OM-{split}: {seconds:.0f} s; L1/pixel {start['l1']:.4f} -> "
        f"{stats['projected']['l1']:.4f}, 1-SSIM {start['ssim_term']:.4f} -> "
        f"{stats['projected']['ssim_term']:.4f}")
    return om, stats


def subset(om, rows):
    return dataclasses.replace(om, **{f.name: getattr(om, f.name)[rows]
                                      for f in dataclasses.fields(om)})


# --- training --------------------------------------------------------------------------------

def image_attack():
    return PGD(eps=EPS, norm="linf", step_size=2.5 * EPS / TRAIN_STEPS, num_steps=TRAIN_STEPS)


def latent_attack(decoder, eta):
    return LatentPGD(decoder, eta=eta, norm="linf", step_size=2.5 * eta / TRAIN_STEPS,
                     num_steps=TRAIN_STEPS)


def one_cycle_adam(total_steps, peak):
    """Adam under a one-cycle-like schedule: linear warm-up from peak/10 over the first 20 % of
    the steps, then a cosine decay to 0."""
    warmup = max(1, int(0.2 * total_steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        peak / 10, decay_steps=max(1, total_steps - warmup), warmup_target=peak,
        warmup_steps=warmup)
    return keras.optimizers.Adam(schedule)


def train(mode, train_data, decoder, eta, args, cache):
    """Trains (or loads) one classifier; returns `(classifier, record)`."""
    tag = f"{mode}_n{len(train_data)}_e{args.epochs}_w{args.width}_s{args.seed}_{args.om_tag}"
    if mode in LATENT_MODES:
        tag += f"_eta{eta:g}"
    tag = tag.replace(".", "p")
    path, record_path = cache / f"{tag}.keras", cache / f"{tag}.json"
    if path.exists() and record_path.exists() and not args.retrain:
        log(f"{mode}: loaded {path.name}")
        return keras.saving.load_model(path), json.loads(record_path.read_text())
    keras.utils.set_random_seed(args.seed)
    clf = md.zoo.small_cnn(input_shape=train_data.images.shape[1:], width=args.width)
    trainer = DualManifoldTrainer(
        clf, image_attack=image_attack() if mode in IMAGE_MODES else None,
        latent_attack=latent_attack(decoder, eta) if mode in LATENT_MODES else None,
        objective="trades" if mode.endswith("trades") else "ce", seed=args.seed)
    steps = args.epochs * -(-len(train_data) // BATCH)
    trainer.compile(optimizer=one_cycle_adam(steps, args.lr))
    log(f"{mode}: training {args.epochs} epochs on {len(train_data)} on-manifold images")
    began, began_cpu = time.time(), cpu()
    history = trainer.fit(train_data.to_dataset(batch_size=BATCH, shuffle=True, seed=args.seed),
                          epochs=args.epochs, verbose=0).history
    seconds, cpu_seconds = time.time() - began, cpu() - began_cpu
    clf.save(path)
    record = {"seconds": seconds, "cpu_seconds": cpu_seconds, "objective": trainer.objective,
              "weights": [trainer.clean_weight, trainer.image_weight, trainer.latent_weight],
              "history": {k: [float(v) for v in vs] for k, vs in history.items()}}
    record_path.write_text(json.dumps(record, indent=1))
    last = {k: round(v[-1], 3) for k, v in record["history"].items() if "accuracy" in k}
    log(f"{mode}: {seconds:.0f} s, last epoch {last}")
    return clf, record


# --- attacks and evaluation ------------------------------------------------------------------

def predict(model, x, batch=500):
    return np.concatenate([np.argmax(ops.convert_to_numpy(model(x[i:i + batch],
                                                                 training=False)), axis=1)
                           for i in range(0, len(x), batch)])


def pgd_eval(steps, seed):
    return PGD(eps=EPS, norm="linf", num_steps=steps, seed=seed, batch_size=ATTACK_BATCH)


def om_pgd_eval(decoder, eta, steps, seed):
    return LatentPGD(decoder, eta=eta, norm="linf", num_steps=steps, seed=seed,
                     batch_size=ATTACK_BATCH)


def choose_eta(normal, cal, decoder, args, out_dir):
    """The calibration rule (see the module docstring). Returns the record of the grid."""
    x, w, y = cal.images, cal.latents, cal.labels
    began, began_cpu = time.time(), cpu()
    pgd_acc = float(np.mean(predict(normal, pgd_eval(args.eval_steps, 11)(normal, x, y)) == y))
    clean_acc = float(np.mean(predict(normal, x) == y))
    log(f"eta: Normal on {len(y)} held-out OM training images: clean {clean_acc:.3f}, "
        f"PGD-{args.eval_steps} {pgd_acc:.3f}")
    grid, examples, chosen = [], [], None
    show = np.array([np.flatnonzero(y == c)[0] for c in range(10) if np.any(y == c)])
    for eta in args.etas:
        w_adv, x_adv = om_pgd_eval(decoder, eta, args.eval_steps, 12).generate(normal, w, y)
        pred = predict(normal, x_adv)
        delta = np.abs(x_adv - x).reshape(len(x), -1)
        grid.append({"eta": eta, "accuracy": float(np.mean(pred == y)),
                     "pixel_l1": float(delta.mean()), "pixel_linf": float(delta.max(1).mean())})
        examples.append((eta, x_adv[show], pred[show]))
        log(f"eta {eta:g}: OM-PGD-{args.eval_steps} accuracy {grid[-1]['accuracy']:.3f}, "
            f"mean |G(w_adv) - G(w)| {grid[-1]['pixel_l1']:.3f}/pixel, L∞ "
            f"{grid[-1]['pixel_linf']:.2f}")
        if grid[-1]["accuracy"] <= pgd_acc + args.tolerance:
            chosen = eta
            break
    png = eta_figure(x[show], y[show], examples, out_dir)
    criterion = args.etas[-1] if chosen is None else chosen
    return {"chosen": min(criterion, args.max_eta), "criterion": criterion,
            "max_eta": args.max_eta, "reached": chosen is not None,
            "pgd_accuracy": pgd_acc, "clean_accuracy": clean_acc, "grid": grid,
            "n": len(y), "png": png, "seconds": time.time() - began,
            "cpu_seconds": cpu() - began_cpu}


def eta_figure(x, y, examples, out_dir):
    """G(w) on top, then G(w_adv) for each η tried; titles: the Normal model's label."""
    from matplotlib.figure import Figure

    names = md.datasets.class_names("fashion_mnist")
    rows = 1 + len(examples)
    fig = Figure(figsize=(1.3 * len(x), 1.45 * rows))
    axes = fig.subplots(rows, len(x), squeeze=False)
    for j in range(len(x)):
        axes[0, j].imshow(x[j, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"G(w): {names[y[j]]}", fontsize=6)
        for i, (eta, images, pred) in enumerate(examples, start=1):
            axes[i, j].imshow(images[j, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(f"η={eta:g} → {names[pred[j]]}", fontsize=6,
                                 color="black" if pred[j] == y[j] else "red")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("OM-PGD on the Normal model (held-out OM training images); red: fooled",
                 fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eta_grid.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def evaluate(clf, test, decoder, eta, args):
    """Per-example correctness under every evaluation, and the seconds each took. Attacks run
    only on the images the model classifies correctly (the others count as wrong)."""
    x, w, y, natural = test.images, test.latents, test.labels, test.originals
    steps = args.eval_steps
    attacks = {
        "fgsm": ("standard", x, lambda a, b: FGSM(eps=EPS, batch_size=ATTACK_BATCH)(clf, a, b)),
        "pgd": ("standard", x, lambda a, b: pgd_eval(steps, 1)(clf, a, b)),
        "mifgsm": ("standard", x, lambda a, b: MIFGSM(eps=EPS, num_steps=steps, decay=1.0,
                                                      batch_size=ATTACK_BATCH)(clf, a, b)),
        "om_pgd": ("standard", w, lambda a, b: om_pgd_eval(decoder, eta, steps, 2).generate(
            clf, a, b)[1]),
        "natural_pgd": ("natural", natural, lambda a, b: pgd_eval(steps, 3)(clf, a, b)),
    }
    began = time.time()
    correct = {"standard": predict(clf, x) == y, "natural": predict(clf, natural) == y}
    seconds = {"clean": time.time() - began}
    for name, (base, inputs, attack) in attacks.items():
        began = time.time()
        rows = np.flatnonzero(correct[base])
        correct[name] = np.zeros(len(y), bool)
        if len(rows):
            correct[name][rows] = predict(clf, attack(inputs[rows], y[rows])) == y[rows]
        seconds[name] = time.time() - began
    correct["worst"] = correct["standard"] & correct["fgsm"] & correct["pgd"] & correct["mifgsm"]
    return {"correct": {k: v.astype(int).tolist() for k, v in correct.items()},
            "seconds": seconds}


# --- summary and rendering -------------------------------------------------------------------

def rate(flags):
    flags = np.asarray(flags, bool)
    k, n = int(flags.sum()), len(flags)
    low, high = clopper_pearson(k, n)
    return {"k": k, "n": n, "rate": k / n, "ci": [100 * low, 100 * high]}


def summarise(evaluations):
    return {mode: {col: rate(e["correct"][col]) for col in OM_COLUMNS + NATURAL_COLUMNS}
            for mode, e in evaluations.items()}


def cell(item):
    return f"{100 * item['rate']:.1f} [{item['ci'][0]:.1f}, {item['ci'][1]:.1f}]"


def minutes(seconds):
    return f"{seconds / 60:.1f}"


def projection_table(payload):
    lines = ["| split | images | L1/pixel, encoder start | L1/pixel, projected | "
             "1 − SSIM, encoder start | 1 − SSIM, projected | closer than the start | time |",
             "|---|---|---|---|---|---|---|---|"]
    for split, s in payload["projection"].items():
        lines.append(f"| {split} | {s['images']:,} | {s['start']['l1']:.4f} | "
                     f"{s['projected']['l1']:.4f} | {s['start']['ssim_term']:.4f} | "
                     f"{s['projected']['ssim_term']:.4f} | {100 * s['improved']:.0f} % | "
                     f"{s['seconds']:.0f} s |")
    return lines


def eta_table(payload):
    e, steps = payload["eta"], payload["config"]["eval_steps"]
    lines = [f"| η (L∞, latent) | OM-PGD-{steps} accuracy of Normal | mean |G(w_adv) − G(w)| "
             "per pixel | mean L∞ pixel change |", "|---|---|---|---|"]
    for g in e["grid"]:
        mark = " **(chosen)**" if g["eta"] == e["chosen"] else ""
        lines.append(f"| {g['eta']:g}{mark} | {100 * g['accuracy']:.1f} % | "
                     f"{g['pixel_l1']:.3f} | {g['pixel_linf']:.2f} |")
    return lines


def results_table(payload):
    s, c = payload["summary"], payload["config"]
    steps = c["eval_steps"]
    lines = [f"| method | Standard | FGSM | PGD-{steps} | MI-FGSM-{steps} | Worst case | "
             f"OM-PGD-{steps} (η = {payload['eta']['chosen']:g}) |",
             "|---|---|---|---|---|---|---|"]
    for mode in s:
        lines.append(f"| {TITLES[mode]} | " + " | ".join(cell(s[mode][col]) for col in OM_COLUMNS)
                     + " |")
    for mode, values in PAPER_T1.items():
        lines.append(f"| *paper: {TITLES[mode]}* | " + " | ".join(f"*{v:.2f}*" for v in values)
                     + " |")
    for mode, (std, pgd, om) in PAPER_T3.items():
        lines.append(f"| *paper (Table 3): {TITLES[mode]}* | *{std:.2f}* | | *{pgd:.2f}* | | | "
                     f"*{om:.2f}* |")
    return lines


def natural_table(payload):
    s, steps = payload["summary"], payload["config"]["eval_steps"]
    lines = [f"| method | Standard (natural) | PGD-{steps} (natural) | paper: Standard | "
             f"paper: PGD-50 |", "|---|---|---|---|---|"]
    for mode in s:
        paper = PAPER_T4.get(mode)
        tail = f"*{paper[0]:.2f}* | *{paper[1]:.2f}*" if paper else " | "
        lines.append(f"| {TITLES[mode]} | {cell(s[mode]['natural'])} | "
                     f"{cell(s[mode]['natural_pgd'])} | {tail} |")
    return lines


def time_table(payload):
    t, e = payload["times"], payload["eta"]
    rows = [(f"projection, {split} ({p['images']:,} images)", p["seconds"],
             p.get("cpu_seconds")) for split, p in payload["projection"].items()]
    rows.append((f"η calibration (Normal, {e['n']} images, {len(e['grid'])} η)", e["seconds"],
                 e.get("cpu_seconds")))
    rows += [(f"training: {TITLES[m]}", v, t["train_cpu"].get(m)) for m, v in t["train"].items()]
    rows += [(f"evaluation: {TITLES[m]}", v, t["evaluate_cpu"].get(m))
             for m, v in t["evaluate"].items()]
    lines = ["| stage | wall-clock (min) | CPU time of the process (min) |", "|---|---|---|"]
    for name, wall, cpu_seconds in rows:
        cpu_text = "—" if cpu_seconds is None or cpu_seconds != cpu_seconds else \
            minutes(cpu_seconds)
        lines.append(f"| {name} | {minutes(wall)} | {cpu_text} |")
    known = [c for _, _, c in rows if c is not None and c == c]
    total_cpu = minutes(sum(known)) if len(known) == len(rows) else "—"
    lines.append(f"| **sum of the stages** (a run from scratch, without loading and set-up) | "
                 f"**{minutes(from_scratch(payload))}** | {total_cpu} |")
    load = payload["load"]
    lines.append(f"| this run, end to end (cached stages loaded, not re-run; load average "
                 f"{load['mean']:.1f}, {load['min']:.1f}–{load['max']:.1f}) | "
                 f"{minutes(payload['seconds'])} | {minutes(payload['cpu_seconds'])} |")
    return lines


def from_scratch(payload):
    t = payload["times"]
    return (sum(s["seconds"] for s in payload["projection"].values()) + payload["eta"]["seconds"]
            + sum(t["train"].values()) + sum(t["evaluate"].values()))


def sign_test(a, b):
    """Two-sided exact sign test on paired booleans (see `_common.sign_test`)."""
    p, only_a, only_b = _common.sign_test(a, b)
    return {"p": p, "only_a": only_a, "only_b": only_b}


def pct(item):
    return f"{100 * item['rate']:.1f} %"


def paired(payload, a, b, column):
    """Sign test of model a against model b on one column (the same test images)."""
    ev = payload["evaluations"]
    return sign_test(ev[a]["correct"][column], ev[b]["correct"][column])


def above(test):
    return test["p"] < 0.05 and test["only_a"] > test["only_b"]


def compare(payload, a, b, column):
    """'x % vs y %, paired p = …' for models a and b on a column."""
    s, t = payload["summary"], paired(payload, a, b, column)
    return (f"{pct(s[a][column])} vs {pct(s[b][column])}, paired p = {t['p']:.2g} "
            f"({t['only_a']} vs {t['only_b']} discordant)")


def reading(payload):
    s, steps = payload["summary"], payload["config"]["eval_steps"]
    om_fails_pgd = above(paired(payload, "at", "om_at", "pgd"))
    at_fails_om = above(paired(payload, "om_at", "at", "om_pgd"))
    dmat_pgd = above(paired(payload, "dmat", "om_at", "pgd"))
    dmat_om = above(paired(payload, "dmat", "at", "om_pgd"))
    found = [om_fails_pgd, at_fails_om, dmat_pgd and dmat_om]
    verdict = ("**The pattern appears.** " if all(found) else
               "**The pattern appears only in part.** " if any(found) else
               "**The pattern does not appear.** ")
    gain = {m: 100 * (s[m]["om_pgd"]["rate"] - s["normal"]["om_pgd"]["rate"])
            for m in ("at", "om_at", "dmat")}
    text = [
        verdict + f"(i) OM-AT against image attacks: PGD-{steps} "
        f"{compare(payload, 'om_at', 'at', 'pgd')} for AT (Normal {pct(s['normal']['pgd'])}): "
        + ("OM-AT fails on PGD, as in the paper." if om_fails_pgd else
           "OM-AT is not significantly worse than AT on PGD, unlike the paper."),
        f"(ii) AT against the on-manifold attack: OM-PGD-{steps} "
        f"{compare(payload, 'at', 'om_at', 'om_pgd')} for OM-AT: "
        + ("AT is significantly less robust on the manifold than OM-AT, as in the paper, "
           if at_fails_om else "AT is not significantly worse than OM-AT here, unlike the "
           "paper, ")
        + f"but the gap is far smaller than the paper's 7.23 vs 27.53 %: the Normal model "
        f"already keeps {pct(s['normal']['om_pgd'])} at η = {payload['eta']['chosen']:g}, AT "
        f"gains {gain['at']:+.1f} points over it and OM-AT {gain['om_at']:+.1f}.",
        f"(iii) DMAT: PGD-{steps} {compare(payload, 'dmat', 'at', 'pgd')} for AT and "
        f"{pct(s['om_at']['pgd'])} for OM-AT; OM-PGD-{steps} "
        f"{compare(payload, 'dmat', 'om_at', 'om_pgd')} for OM-AT and "
        f"{pct(s['at']['om_pgd'])} for AT ({compare(payload, 'dmat', 'at', 'om_pgd')}): "
        + ("DMAT holds both, significantly above OM-AT on PGD and above AT on OM-PGD, as in "
           "the paper" + (", at a small cost against each specialist (the paper's DMAT too: "
                          "37.86 vs 38.88 % on PGD-50, 20.53 vs 27.53 % on OM-PGD-50)."
                          if above(paired(payload, "at", "dmat", "pgd"))
                          or above(paired(payload, "om_at", "dmat", "om_pgd")) else ".")
           if dmat_pgd and dmat_om else
           "DMAT is significantly above OM-AT on PGD but not significantly above AT on OM-PGD."
           if dmat_pgd else "DMAT is significantly above AT on OM-PGD but not above OM-AT on "
           "PGD." if dmat_om else "DMAT is not significantly above the other method on "
           "either attack."),
        f"Standard accuracy (on-manifold / natural test images): Normal "
        f"{pct(s['normal']['standard'])} / {pct(s['normal']['natural'])}, AT "
        f"{pct(s['at']['standard'])} / {pct(s['at']['natural'])}, OM-AT "
        f"{pct(s['om_at']['standard'])} / {pct(s['om_at']['natural'])}, DMAT "
        f"{pct(s['dmat']['standard'])} / {pct(s['dmat']['natural'])}"
        + ("; on-manifold training does not raise standard accuracy above Normal training here "
           "(the paper: OM-AT 78.10 vs Normal 74.72 %)."
           if s["om_at"]["standard"]["rate"] <= s["normal"]["standard"]["rate"] else
           "; OM-AT raises standard accuracy above Normal training, as in the paper."),
        "From the on-manifold to the natural test images standard accuracy changes by "
        + ", ".join(f"{100 * (s[m]['natural']['rate'] - s[m]['standard']['rate']):+.1f}"
                    for m in ("normal", "at", "om_at", "dmat"))
        + " points (Normal, AT, OM-AT, DMAT; the paper: −7.51, −2.23, −4.22, −3.24). "
        f"On the natural originals (Table 4) the robust accuracies follow the on-manifold ones "
        f"(PGD-{steps}: Normal {pct(s['normal']['natural_pgd'])}, AT "
        f"{pct(s['at']['natural_pgd'])}, OM-AT {pct(s['om_at']['natural_pgd'])}, DMAT "
        f"{pct(s['dmat']['natural_pgd'])}).",
    ]
    if "trades" in s and "dmat_trades" in s:
        tr, dt = s["trades"], s["dmat_trades"]
        text.append(f"TRADES / DMAT + TRADES: PGD-{steps} {pct(tr['pgd'])} / {pct(dt['pgd'])}, "
                    f"OM-PGD-{steps} {pct(tr['om_pgd'])} / {pct(dt['om_pgd'])} (paper Table 3: "
                    "46.06 / 42.57 and 8.92 / 26.82 %).")
    return " ".join(text)


def setup_text(payload):
    c, g, e = payload["config"], payload["generator"], payload["eta"]
    vae = g.get("config") or {}
    return (
        f"Written by `models/dmat.py` ({minutes(from_scratch(payload))} min of stages on 2 "
        "shared CPU cores, see Wall-clock). **Generator**: the VAE of `models/generators.py` "
        f"(`zoo.generators.VAE`, latent_dim {vae.get('latent_dim', 16)}, width "
        f"{vae.get('width', '?')}, {g.get('epochs')} epochs on {g.get('train_images'):,} images, "
        f"file sha1 {g['tag']}); the authors used a 256-px ImageNet StyleGAN. **OM-Fashion-"
        f"MNIST**: the first {c['train_size']:,} + {c['n_cal']} training and the first "
        f"{c['n_test']:,} test images projected with `build_on_manifold_dataset` (encoder "
        f"start, {c['proj_steps']} Adam steps, peak rate {c['proj_lr']:g}, d = mean L1 + "
        "(1 − SSIM); the authors: 1000 steps from the mean latent with a VGG perceptual loss); "
        "the on-manifold images are exactly G(w). The last "
        f"{c['n_cal']} projected training images are held out of training for the η rule. "
        f"**η rule** (fixed before any robust model was trained): the smallest η of "
        f"{', '.join(f'{v:g}' for v in c['etas'])} at which OM-PGD-{c['eval_steps']} leaves the "
        f"Normal model at most {100 * c['tolerance']:.0f} points above PGD-{c['eval_steps']} "
        f"at ε = {EPS:g} on those held-out images ({100 * e['pgd_accuracy']:.1f} %, clean "
        f"{100 * e['clean_accuracy']:.1f} %) — the authors' η = 0.02 did this on OM-ImageNet "
        f"(0.26 vs 0.00 %) — capped at the largest η whose G(w_adv) still showed the class "
        f"of G(w) in the PNG of G(w) and G(w_adv) per η tried (`{e['png']}`, not committed), "
        f"judged by eye: {e['max_eta']:g}. The accuracy criterion alone gives η = "
        f"{e['criterion']:g}"
        + ("" if e["reached"] else " (NOT met on the grid: its largest value)")
        + (f", where bags turned into boots and sandals into closed shoes (a class change, not "
           f"an adversarial example); **η = {e['chosen']:g}** is used"
           if e["criterion"] > e["max_eta"] else f"; **η = {e['chosen']:g}** is used")
        + ". **Training**: "
        f"`zoo.small_cnn(width={c['width']})` (logits) on the {c['train_size']:,} on-manifold "
        f"training images with `DualManifoldTrainer`, {c['epochs']} epochs, batch {BATCH}, "
        f"Adam with a one-cycle-like schedule (`CosineDecay` with a linear warm-up from "
        f"{c['lr'] / 10:g} to {c['lr']:g} over the first 20 % of the steps, then cosine to 0), "
        f"seed {c['seed']}, the same for every model. Image attack PGD-5 L∞ ε = {EPS:g} "
        f"(step {2.5 * EPS / TRAIN_STEPS:g}, random start; the library's Fashion-MNIST "
        "threat — the authors' 4/255 was for 256-px ImageNet); latent attack OM-PGD-5 L∞ η "
        f"(step 2.5·η/5, random start). AT = CE on PGD-5; OM-AT = CE on G(w_adv); DMAT = 0.5 "
        "CE(PGD-5) + 0.5 CE(G(w_adv)), no clean term (the authors' loss)"
        + ("; TRADES and DMAT + TRADES: β = 6, attacks maximising the KL term (eq. 11)"
           if "trades" in payload["summary"] else "")
        + f". **Evaluation** on the first {c['n']:,} on-manifold test images: FGSM (one step "
        f"of ε), PGD-{c['eval_steps']} (step 2.5·ε/{c['eval_steps']}, random start), "
        f"MI-FGSM-{c['eval_steps']} (decay 1, step ε/{c['eval_steps']}), all at ε = {EPS:g}; "
        "worst case = correct on the clean image and under all three; OM-PGD-"
        f"{c['eval_steps']} = `LatentPGD` from the stored latent (η, step 2.5·η/"
        f"{c['eval_steps']}, random start), scored on G(w_adv). Attacks run on the images the "
        "model classifies correctly; the others count as wrong. Table 4: the natural originals "
        f"of the same images. Brackets: 95 % Clopper–Pearson intervals (n = {c['n']:,}).")


def scaled_text(payload):
    c = payload["config"]
    return (
        "**Scaled down** for 2 shared CPU cores and a 45-minute budget: Fashion-MNIST 28 px and "
        "a 16-d VAE instead of OM-ImageNet and StyleGAN's (14, 512) W+; "
        f"{c['proj_steps']} projection steps with SSIM instead of 1000 with a VGG loss; "
        f"{c['train_size']:,} training images; a small CNN for {c['epochs']} epochs instead of "
        "ResNet-50 for 20; the paper's numbers (italic) are for a different dataset, model and "
        "budget and are there for the pattern, not for comparison number by number."
        + ("" if "trades" in payload["summary"] else
           " TRADES and DMAT + TRADES (Table 3) are not in the default run: they would add "
           "about two more trainings and evaluations (~13 min at this load); `--trades` runs "
           "them."))


def render(payload):
    return "\n".join([
        "## dmat", "", setup_text(payload), "",
        "### Projection onto the VAE (OM-Fashion-MNIST)", "", *projection_table(payload), "",
        "### Latent budget η (Normal model, held-out on-manifold training images)", "",
        *eta_table(payload), "",
        f"### Table 1: on-manifold test images (accuracy in %, n = {payload['config']['n']:,})",
        "", *results_table(payload), "",
        "### Table 4: natural (out-of-manifold) test images", "", *natural_table(payload), "",
        "### Wall-clock", "", *time_table(payload), "",
        "### Reading", "", reading(payload), "", scaled_text(payload), ""])


# --- main ------------------------------------------------------------------------------------

def run(args):
    cache = Path(args.cache_dir) / ("quick" if args.quick else "")
    cache.mkdir(parents=True, exist_ok=True)
    vae, generator = load_generator(args)
    args.vae_tag = generator["tag"]
    om_train, train_stats = on_manifold(vae, "train", args.train_size + args.n_cal, args, cache)
    om_test, test_stats = on_manifold(vae, "test", args.n_test, args, cache)
    args.om_tag = f"{args.vae_tag}k{args.proj_steps}lr{args.proj_lr:g}"
    train_data = subset(om_train, slice(0, args.train_size))
    cal = subset(om_train, slice(args.train_size, args.train_size + args.n_cal))
    test = subset(om_test, slice(0, args.n))
    modes = [m for m in MODES if args.trades or "trades" not in m]
    classifiers = {}
    times = {"train": {}, "evaluate": {}, "train_cpu": {}, "evaluate_cpu": {}}
    classifiers["normal"], record = train("normal", train_data, vae.decoder, None, args, cache)
    times["train"]["normal"] = record["seconds"]
    times["train_cpu"]["normal"] = record.get("cpu_seconds", float("nan"))
    if args.eta is None:
        eta = choose_eta(classifiers["normal"], cal, vae.decoder, args, cache)
    else:
        eta = {"chosen": args.eta, "criterion": args.eta, "max_eta": args.eta, "reached": True,
               "pgd_accuracy": float("nan"),
               "clean_accuracy": float("nan"), "grid": [], "n": 0, "png": "—", "seconds": 0.0,
               "cpu_seconds": 0.0}
    log(f"eta = {eta['chosen']:g}" + ("" if eta["reached"] else " (rule not met on the grid)"))
    if args.calibrate_only:
        log(f"--calibrate-only: stopping after the η rule; see {eta['png']}")
        return None
    for mode in modes[1:]:
        classifiers[mode], record = train(mode, train_data, vae.decoder, eta["chosen"], args,
                                          cache)
        times["train"][mode] = record["seconds"]
        times["train_cpu"][mode] = record.get("cpu_seconds", float("nan"))
    evaluations = {}
    for mode in modes:
        began, began_cpu = time.time(), cpu()
        evaluations[mode] = evaluate(classifiers[mode], test, vae.decoder, eta["chosen"], args)
        times["evaluate"][mode] = time.time() - began
        times["evaluate_cpu"][mode] = cpu() - began_cpu
        acc = {k: round(float(np.mean(v)), 3) for k, v in evaluations[mode]["correct"].items()}
        log(f"{mode}: evaluated in {times['evaluate'][mode]:.0f} s: {acc}")
    config = {k: v for k, v in vars(args).items() if k not in ("from_json",)}
    return {"config": config, "generator": generator,
            "projection": {"train": train_stats, "test": test_stats}, "eta": eta,
            "summary": summarise(evaluations), "evaluations": evaluations, "times": times,
            "seconds": time.time() - STARTED, "cpu_seconds": cpu(),
            "load": {"mean": float(np.mean(LOADS)), "min": float(np.min(LOADS)),
                     "max": float(np.max(LOADS))}}


def quick_sizes(args):
    args.train_size, args.n_cal, args.n_test, args.n = 192, 64, 64, 64
    args.proj_steps, args.epochs, args.eval_steps = 3, 1, 5
    args.etas = QUICK_ETAS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default=str(ROOT / "models" / "results" / "generators" /
                                             "vae_fmnist.keras"))
    parser.add_argument("--wait-minutes", type=float, default=60.0,
                        help="wait this long for the VAE file to appear")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--n-cal", type=int, default=200,
                        help="held-out projected training images for the η rule")
    parser.add_argument("--n-test", type=int, default=1000, help="test images projected")
    parser.add_argument("--n", type=int, default=1000, help="on-manifold test images evaluated")
    parser.add_argument("--proj-steps", type=int, default=10)
    parser.add_argument("--proj-lr", type=float, default=0.1)
    parser.add_argument("--proj-batch", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="η rule: OM-PGD accuracy at most this above PGD's")
    parser.add_argument("--max-eta", type=float, default=0.3,
                        help="η rule cap: the largest η whose G(w_adv) still showed the class "
                        "in eta_grid.png (judged by eye for the VAE of models/generators.py)")
    parser.add_argument("--eta", type=float, default=None,
                        help="skip the rule and use this latent budget")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="stop after the projection, Normal training and the η rule")
    parser.add_argument("--trades", action="store_true",
                        help="also train TRADES and DMAT + TRADES")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="ignore cached classifiers")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes no results")
    parser.add_argument("--cache-dir", default=str(ROOT / "models" / "results" / "dmat"))
    parser.add_argument("--from-json", action="store_true",
                        help="only re-render the section from the cached dmat.json")
    args = parser.parse_args(argv)
    args.etas = ETAS
    if args.quick:
        quick_sizes(args)
    if args.n > args.n_test:
        parser.error(f"--n ({args.n}) must be at most --n-test ({args.n_test})")
    json_path = Path(args.cache_dir) / ("quick" if args.quick else "") / "dmat.json"
    payload = json.loads(json_path.read_text()) if args.from_json else run(args)
    if payload is None:
        return
    if not args.from_json:
        json_path.write_text(json.dumps(payload))
    text = render(payload)
    print(text)
    if args.quick:
        log(f"quick run ({minutes(payload['seconds'])} min): nothing written to RESULTS.md")
        return
    update_section(ROOT / "models" / "RESULTS.md", "dmat", text,
                   "# Results of the recipes in models/\n")
    log("wrote models/RESULTS.md (## dmat)")


if __name__ == "__main__":
    main()
