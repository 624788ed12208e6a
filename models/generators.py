"""Generators for the on-manifold defenses: a VAE and a DCGAN on Fashion-MNIST.

1. VAE (`zoo.VAE`, latent_dim 16, width 32, Bernoulli reconstruction, beta 1) on all 60,000
   training images: Adam 1e-3, batch 128, `--vae-epochs` epochs. On the 10,000 test images:
   the reconstruction error of decode(encode(x)) (posterior means, no sampling) as the mean
   per-image L1 and L2 distances and the per-pixel mean |Δ|, next to two baselines (the
   untrained VAE and the mean training image); the negative ELBO (one z sample per image);
   the active latent units (Burda et al.: Var_x E_q[z_i] > 0.01) and the range of the codes
   (Stutz et al. box their latent attack with it). PNG grids of test reconstructions and of
   samples from N(0, I).
2. DCGAN (`zoo.DCGAN`, latent_dim 64, `--gan-width` 32) on the same images: Adam 2e-4,
   beta_1 0.5 for both players, batch 128, `--gan-epochs` epochs; a PNG grid of samples.
Models are cached in `--cache-dir` (default `models/results/generators/`, ignored by git) as
`vae_fmnist.keras` and `dcgan_fmnist.keras` with a JSON of their settings, history and
training time; a cached model is not retrained unless `--retrain`. The DMAT recipe loads
`vae_fmnist.keras` and uses `vae.encoder` / `vae.decoder`. Writes `## generators` of
`models/RESULTS.md` and `models/results/generators.json`.

Scaled down for 2 shared CPU cores: each model gets at most ~10 minutes of training (8 VAE
epochs, 6 DCGAN epochs at width 32 instead of the class default 64: width 64 costs ~3.5 min
per epoch here). About 18 minutes when nothing is cached (VAE 8.4 min, DCGAN 9.0 min at a
load average of 2-5, evaluation and figures 0.8 min), about 1 minute from the cache.
`--quick` trains both on 1,024 images for one epoch (~15 s), caches under
`--cache-dir/quick/` and writes nothing to RESULTS.md.

Usage:
    .venv/bin/python models/generators.py [--vae-epochs 8] [--gan-epochs 6] [--gan-width 32]
        [--retrain] [--quick] [--cache-dir DIR] [--looks "what the figures show, by eye"]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import manidefense as md  # noqa: E402
from manidefense._markdown import update_section  # noqa: E402
from manidefense.zoo.generators import DCGAN, VAE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
STARTED = time.time()


def log(message):
    print(f"[{(time.time() - STARTED) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


def train_or_load(name, make, compile_args, x, epochs, cache, retrain):
    """The cached model and its training record, or a freshly trained (and cached) one."""
    path, record_path = cache / f"{name}.keras", cache / f"{name}.json"
    if path.exists() and record_path.exists() and not retrain:
        log(f"{name}: loaded from {path}")
        return keras.saving.load_model(path), json.loads(record_path.read_text())
    keras.utils.set_random_seed(0)
    model = make()
    model.compile(**compile_args)
    log(f"{name}: training {epochs} epochs on {len(x)} images")
    began = time.time()
    history = model.fit(x, epochs=epochs, batch_size=BATCH, verbose=2).history
    seconds = time.time() - began
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    record = {"config": {k: v for k, v in model.get_config().items()
                         if k in ("latent_dim", "image_shape", "width", "beta",
                                  "reconstruction", "seed")},
              "epochs": epochs, "batch_size": BATCH, "train_images": len(x),
              "seconds": seconds, "history": {k: [float(v) for v in vs]
                                              for k, vs in history.items()}}
    record_path.write_text(json.dumps(record, indent=1))
    log(f"{name}: trained in {seconds:.0f} s, saved {path}")
    return model, record


def reconstruction_errors(x, x_rec):
    delta = (x_rec - x).reshape(len(x), -1).astype(np.float64)
    return {"l1": float(np.abs(delta).sum(1).mean()),
            "l2": float(np.sqrt((delta**2).sum(1)).mean()),
            "pixel": float(np.abs(delta).mean())}


def batched(model, x, size=500):
    """Eager calls on slices: no `predict` graph traced per model."""
    return np.concatenate([np.asarray(model(x[i:i + size])) for i in range(0, len(x), size)])


def evaluate_vae(vae, x_train, x_test):
    began = time.time()
    codes, log_var = (np.concatenate(parts) for parts in zip(
        *(vae.encoder(x_test[i:i + 500]) for i in range(0, len(x_test), 500)), strict=True))
    x_rec = batched(vae.decoder, codes)
    keras.utils.set_random_seed(1)  # the untrained baseline's weights
    untrained = VAE(**{k: vae.get_config()[k] for k in ("latent_dim", "image_shape", "width")},
                    seed=1)
    x_untrained = batched(untrained, x_test)
    elbo = vae.evaluate(x_test, batch_size=500, verbose=0, return_dict=True)
    variance = codes.var(0)
    return {"trained": reconstruction_errors(x_test, x_rec),
            "untrained": reconstruction_errors(x_test, x_untrained),
            "mean_image": reconstruction_errors(
                x_test, np.broadcast_to(x_train.mean(0), x_test.shape)),
            "negative_elbo": elbo["loss"], "reconstruction_loss": elbo["reconstruction_loss"],
            "kl_loss": elbo["kl_loss"], "active_units": int((variance > 0.01).sum()),
            "code_std": [float(v) for v in np.sqrt(variance)],
            "code_range": [float(codes.min()), float(codes.max())],
            "posterior_std": float(np.exp(0.5 * log_var).mean()),
            "seconds": time.time() - began}


def nearest_training_distance(images, x_train):
    """Mean L2 distance from each image to its nearest training image (a realism proxy)."""
    a = np.asarray(images, np.float64).reshape(len(images), -1)
    b = x_train.reshape(len(x_train), -1).astype(np.float64)
    d2 = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None]
    return float(np.sqrt(np.maximum(d2.min(1), 0)).mean())


def sample_statistics(vae, gan, x_train, x_test):
    """Nearest-training-image distance of 256 samples of each model and of 256 test images."""
    return {name: nearest_training_distance(images, x_train) for name, images in (
        ("test images", x_test[:256]), ("VAE samples", vae.sample(256, seed=0)),
        ("VAE reconstructions", batched(vae, x_test[:256])),
        ("DCGAN samples", gan.sample(256, seed=0)))}


def grid(images, columns):
    rows = len(images) // columns
    h, w, c = images.shape[1:]
    tiles = images[:rows * columns].reshape(rows, columns, h, w, c)
    return tiles.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)


def save_grid(path, images, columns, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picture = grid(np.asarray(images), columns)
    fig, ax = plt.subplots(figsize=(columns * 0.45 + 0.3, picture.shape[0] / 28 * 0.45 + 0.5))
    ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pictures(vae, gan, x_test, out):
    """Reconstructions (rows of originals over their reconstructions) and samples."""
    originals = x_test[:48]
    recons = np.asarray(vae.decode(vae.encode(originals)))
    rows = [part for i in range(0, 48, 16) for part in (originals[i:i + 16], recons[i:i + 16])]
    save_grid(out / "vae_reconstructions.png", np.concatenate(rows), 16,
              "VAE: test images (odd rows) and decode(encode(x)) (even rows)")
    save_grid(out / "vae_samples.png", vae.sample(64, seed=0), 8, "VAE samples, z ~ N(0, I)")
    save_grid(out / "dcgan_samples.png", gan.sample(64, seed=0), 8,
              "DCGAN samples, z ~ N(0, I)")
    return [str(out / name) for name in ("vae_reconstructions.png", "vae_samples.png",
                                         "dcgan_samples.png")]


def run(args):
    limit = 1024 if args.quick else None
    x_train, _ = md.datasets.load("fashion_mnist", "train", limit=limit)
    x_test, _ = md.datasets.load("fashion_mnist", "test", limit=512 if args.quick else None)
    cache = Path(args.cache_dir) / ("quick" if args.quick else "")
    vae_epochs, gan_epochs = (1, 1) if args.quick else (args.vae_epochs, args.gan_epochs)
    vae, vae_record = train_or_load(
        "vae_fmnist", lambda: VAE(latent_dim=16, width=32, seed=0),
        {"optimizer": keras.optimizers.Adam(1e-3)}, x_train, vae_epochs, cache, args.retrain)
    gan, gan_record = train_or_load(
        "dcgan_fmnist", lambda: DCGAN(latent_dim=64, width=args.gan_width, seed=0), {},
        x_train, gan_epochs, cache, args.retrain)
    log("evaluating the VAE on the test set")
    evaluation = evaluate_vae(vae, x_train, x_test)
    evaluation["nearest"] = sample_statistics(vae, gan, x_train, x_test)
    figures = pictures(vae, gan, x_test, cache)
    log(f"figures: {', '.join(figures)}")
    return {"vae": vae_record, "dcgan": gan_record, "evaluation": evaluation,
            "train_images": len(x_train), "test_images": len(x_test), "figures": figures,
            "seconds": time.time() - STARTED}


def render(p, looks):
    v, g, e = p["vae"], p["dcgan"], p["evaluation"]
    vc, gc = v["config"], g["config"]
    row = "| {} | {:.1f} | {:.2f} | {:.3f} |"
    lines = [
        "## generators", "",
        f"Written by `models/generators.py` (Fashion-MNIST, {p['train_images']:,} training "
        f"images, {p['test_images']:,} test images; 2 shared CPU cores, no GPU). Cached as "
        "`models/results/generators/vae_fmnist.keras` and `dcgan_fmnist.keras` (the DMAT "
        "recipe uses `vae.encoder` / `vae.decoder`).", "",
        f"**VAE** (`zoo.VAE`): latent_dim {vc['latent_dim']}, width {vc['width']}, "
        f"reconstruction `{vc['reconstruction']}` (sum over pixels), beta {vc['beta']:g}; "
        f"Adam 1e-3, batch {v['batch_size']}, {v['epochs']} epochs (set by the ~10-minute "
        "budget; Stutz et al. trained their Fashion-MNIST VAE-GAN for 60): "
        f"**{v['seconds'] / 60:.1f} min** of training. Final-epoch training loss "
        f"{v['history']['loss'][-1]:.1f} "
        f"(reconstruction {v['history']['reconstruction_loss'][-1]:.1f}, KL "
        f"{v['history']['kl_loss'][-1]:.1f}).", "",
        "Test-set reconstruction `decode(encode(x))` (posterior means; L1 and L2 per image "
        "over 784 pixels, then averaged over images):", "",
        "| reconstruction | mean L1 per image | mean L2 per image | mean abs. error per pixel |",
        "|---|---|---|---|",
        row.format("trained VAE", *(e["trained"][k] for k in ("l1", "l2", "pixel"))),
        row.format("untrained VAE (same architecture)",
                   *(e["untrained"][k] for k in ("l1", "l2", "pixel"))),
        row.format("mean training image", *(e["mean_image"][k] for k in ("l1", "l2", "pixel"))),
        "",
        f"Negative ELBO on the test set (one z sample per image): **{e['negative_elbo']:.1f} "
        f"nats per image** = reconstruction {e['reconstruction_loss']:.1f} + KL "
        f"{e['kl_loss']:.1f}. Fashion-MNIST pixels are grey levels, not bits, so the Bernoulli "
        "term includes the pixels' own entropy: this is a training objective, not a "
        f"likelihood comparable to published (binarised) numbers. Active latent units: "
        f"{e['active_units']} of {vc['latent_dim']} (Var_x E_q[z_i] > 0.01); std of the codes "
        f"per unit {min(e['code_std']):.2f}-{max(e['code_std']):.2f}, codes within "
        f"[{e['code_range'][0]:.2f}, {e['code_range'][1]:.2f}], mean posterior std "
        f"{e['posterior_std']:.2f} (a latent budget eta is measured against these scales).", "",
        f"**DCGAN** (`zoo.DCGAN`): latent_dim {gc['latent_dim']}, width {gc['width']} "
        "(scaled down from the class default 64, which costs ~3.5 min per epoch here), "
        f"non-saturating loss, Adam 2e-4 / beta_1 0.5 for both players, batch "
        f"{g['batch_size']}, {g['epochs']} epochs: **{g['seconds'] / 60:.1f} min**. Final "
        f"epoch: generator loss {g['history']['generator_loss'][-1]:.2f}, discriminator "
        f"loss {g['history']['discriminator_loss'][-1]:.2f}.", "",
        "Mean L2 distance to the nearest of the training images, 256 images each (a crude "
        "realism proxy: blurry images sit closer to everything than sharp ones, so read it "
        "next to the figures): " + ", ".join(
            f"{name} {d:.2f}" for name, d in e["nearest"].items()) + ".", "",
        "Figures in `models/results/generators/`: `vae_reconstructions.png`, "
        "`vae_samples.png`, `dcgan_samples.png`." + (f" By eye: {looks}" if looks else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae-epochs", type=int, default=8)
    parser.add_argument("--gan-epochs", type=int, default=6)
    parser.add_argument("--gan-width", type=int, default=32)
    parser.add_argument("--retrain", action="store_true", help="ignore the cached models")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--looks", default="",
                        help="what the figures look like, written by whoever looked at them")
    parser.add_argument("--cache-dir", default=str(ROOT / "models" / "results" / "generators"))
    args = parser.parse_args(argv)
    payload = run(args)
    text = render(payload, args.looks)
    print(text)
    if args.quick:
        log("quick run: nothing written to RESULTS.md (models and figures in the quick cache)")
        return
    (ROOT / "models" / "results" / "generators.json").write_text(json.dumps(payload, indent=1))
    update_section(ROOT / "models" / "RESULTS.md", "generators", text,
                   "# Results of the recipes in models/\n")
    log("wrote models/RESULTS.md (## generators) and models/results/generators.json")


if __name__ == "__main__":
    main()
