"""Model shells (Wu, Jang, Chen & Jha) on Fashion-MNIST: Table 1's pattern, then adaptive attacks.

1. Bases: the PGD-adversarially-trained `zoo.small_cnn(width=16)` of `models/rbf_cnn.py`
   (Madry: PGD-L∞ 0.1, 7 steps, 12,000 images, 5 epochs; the paper's postulate needs a robust
   base, and the authors used Madry's CIFAR-10 model), and the plain CNN as a contrast. Both
   are loaded from rbf_cnn's cache (`--cache-dir`) and trained with rbf_cnn's code when missing.
2. Shells on each base: MCN L∞ with δ = ε = 0.1 (the authors' τ = 8/255 equalled their ε) and
   with δ = ε/2, `method="pgd"`, `--mcn-steps` steps per class (5 by default: on 100 images
   their decisions agreed with 20 steps on 100% of clean and 99% of PGD inputs, at a quarter
   of the cost); NCN L2 with p = 0.9 (`--ncn-stages` × `--ncn-steps` Adam steps per class).
3. On the first `--n` test images the base classifies correctly (the paper's protocol), L∞
   ε = 0.1:
   (a) NON-ADAPTIVE transfer, the paper's set-up: PGD-L∞ (20 steps) and an untargeted
       minimal-distortion CW-L∞ crafted on the base, fed to the shell: attack success rate
       (ASR) on the base and on the shell, and the shell's retained accuracy;
   (d1) PGD on the base at ε with the CW margin loss (`--d1-steps` steps), so that the wrong
       class stays confident around x' (the shell then searches into it);
   (b) BPDA through the shell: PGD on `adaptive_model(shell)` (forward: the shell; backward:
       the base at x, the library's straight-through surrogate);
   (b') straight-through at H(x'): PGD on F(x' + stop_gradient(H(x') - x')), the base's
       gradient at the point the search returns;
   (b'') MCN only: PGD with the margin loss on the per-class values the shell compares,
       v_t = log F(z_t)_t, each differentiated at its own search result z_t (Danskin);
   (c) SPSA on the shell (gradient-free), on the first `--n-spsa` images (not NCN: cost);
   (d2) PGD-margin on the base at ε + δ fed to the MCN shells: a LARGER threat model than ε.
   The adaptive attacks run as a cascade (d1, b, b', b'', c): each on the examples the shell
   classifies correctly and no earlier one fooled, so its cell says how many more it
   breaks; the survivors are the worst case = the shell's honest robust accuracy, with 95%
   Clopper-Pearson intervals. Clean accuracy of bases and shells on the first `--n-clean`
   test images (all of them).
Writes `## model_shells` of `models/RESULTS.md`, `models/results/model_shells.json` and two
figures in `models/results/model_shells/` (`plot_shell_search`, `plot_confidence_shift`).

Scaled down for 2 shared CPU cores (defaults): 100 correct test images (the paper: 150),
clean accuracy on 200; the plain CNN with MCN δ = ε only (`--contrast-shells`); MCN with 5
steps per class, NCN with 2 stages of 10 Adam steps; BPDA and straight-through PGD with 10
steps, the Danskin attack with 50; SPSA with 5 steps of 8 directions on the survivors among
the first 30; CW-L∞ with 30 Adam steps per c (c x10 from 1e-5, τ x0.7 from 0.1). About 20
minutes wall on 2 CPU cores at a load average of ~2 (the numbers in RESULTS.md), more when
other jobs load the machine (the searches ran 3x slower under a load of 6); `--quick` (tiny
sizes, writes nothing but two figures under `models/results/model_shells/quick/`) takes 1-3
minutes; `--from-json` re-renders the section.

Usage:
    PYTHONPATH=/path/to/manidefense .venv/bin/python models/model_shells.py [--n 100]
        [--n-clean 200] [--n-spsa 30] [--mcn-steps 5] [--quick] [--from-json]
"""

import argparse
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
from manidefense.attacks import PGD, SPSA, CarliniWagnerLinf, adaptive_model  # noqa: E402
from manidefense.attacks.gradients import logits_function  # noqa: E402
from manidefense.attacks.pgd import default_step_size, pgd_loop  # noqa: E402
from manidefense.shells import MCN, NCN, ModelShell  # noqa: E402
from manidefense.stats import clopper_pearson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.1  # the L∞ threat model (Fashion-MNIST), as in models/rbf_cnn.py
P = 0.9  # NCN's confidence threshold
BASES = ("pgd_at", "base")
BASE_TITLES = {"pgd_at": "PGD-AT (Madry)", "base": "CNN"}
SHELLS = ("mcn_eps", "mcn_half", "ncn")
SHELL_TITLES = {"mcn_eps": "MCN L∞ δ = ε", "mcn_half": "MCN L∞ δ = ε/2",
                "ncn": f"NCN L2 p = {P:g}"}
CASCADE = ("bpda", "st", "danskin", "spsa")  # run after d1, on the survivors
PAPER = {"base_asr": 37.33, "shell_asr": 1.33, "retained": 98.0, "n": 150}
STARTED = time.time()


def log(message):
    print(f"[{(time.time() - STARTED) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


# --- bases -----------------------------------------------------------------------------------

def load_bases(args):
    """The cached classifiers of models/rbf_cnn.py (same file names); trained with its code
    (`compiled`, `AugmentedTrainer`, `madry_augment`) when missing."""
    cache = Path(args.cache_dir)
    tag = f"n{args.train_size}_e{args.epochs}_w{args.width}_s{args.seed}"
    bases = {}
    for name in BASES:
        path = cache / f"{name}_{tag}.keras"
        if path.exists():
            bases[name] = keras.saving.load_model(path)
            log(f"{name}: loaded from {path}")
            continue
        sys.path.insert(0, str(ROOT / "models"))
        import rbf_cnn

        cache.mkdir(parents=True, exist_ok=True)
        x, y = md.datasets.load("fashion_mnist", "train", limit=args.train_size)
        keras.utils.set_random_seed(args.seed)
        clf = md.zoo.small_cnn(input_shape=x.shape[1:], width=args.width)
        fit = dict(batch_size=rbf_cnn.BATCH, epochs=args.epochs, verbose=0, shuffle=True)
        log(f"training {name} (not cached at {path})")
        began = time.time()
        if name == "base":
            rbf_cnn.compiled(clf, False).fit(x, y, **fit)
        else:
            trainer = rbf_cnn.AugmentedTrainer(clf, rbf_cnn.madry_augment(clf, seed=args.seed))
            rbf_cnn.compiled(trainer, False).fit(x, y, **fit)
        clf.save(path)
        path.with_suffix(".json").write_text(json.dumps({"total": time.time() - began}))
        bases[name] = clf
        log(f"{name}: trained in {time.time() - began:.0f} s")
    return bases


def probabilities(model, x, batch=500):
    logits_fn = logits_function(model)
    return np.concatenate([ops.convert_to_numpy(ops.softmax(logits_fn(
        ops.convert_to_tensor(x[i:i + batch])), axis=-1)) for i in range(0, len(x), batch)])


# --- shells and attacks ----------------------------------------------------------------------

def make_shells(base, names, args):
    factories = {
        "mcn_eps": lambda: MCN(EPS, norm="linf", num_steps=args.mcn_steps),
        "mcn_half": lambda: MCN(EPS / 2, norm="linf", num_steps=args.mcn_steps),
        "ncn": lambda: NCN(P, norm="l2", num_steps=args.ncn_steps, num_stages=args.ncn_stages,
                           step_size=args.ncn_step_size),
    }
    return {name: ModelShell(base, factories[name]()) for name in names}


def shells_of(base_name, args):
    return SHELLS if base_name == "pgd_at" else tuple(args.contrast_shells)


def shell_delta(shell):
    return getattr(shell.search_factor, "delta", None)


class StraightThrough(keras.Model):
    """F(x + stop_gradient(H(x) - x)): the shell's forward value, and as gradient the base's
    gradient at the searched point H(x) (a straight-through estimate of the search, dH/dx = I).
    For MCN L∞ the search ends on a corner of the δ-box that moves with x, so this is close to
    the true gradient wherever the chosen class does not switch. Returns logits."""

    def __init__(self, shell, **kwargs):
        super().__init__(**kwargs)
        self.shell = shell
        self._logits = logits_function(shell.base_model, shell.base_output)

    def call(self, inputs, training=False):
        x = ops.cast(inputs, "float32")
        z = self.shell.search_factor.find(self._logits, x)[0]
        return self._logits(x + ops.stop_gradient(z - x))


class MCNValues(keras.Model):
    """The per-class values the MCN shell compares, v_t = log F(z_t)_t with z_t the class-t
    search result (the same targeted PGD as `MCN.find`), as logits; each with the gradient
    ∇ log F_t at z_t (straight-through per class, i.e. Danskin's gradient of the inner max).
    The shell answers argmax_t v_t, so a margin attack on these values attacks its decision."""

    def __init__(self, shell, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.shell = shell
        self.num_classes = num_classes
        self._logits = logits_function(shell.base_model, shell.base_output)

    def call(self, inputs, training=False):
        mcn, c = self.shell.search_factor, self.num_classes
        x = ops.cast(inputs, "float32")
        tiled = ops.repeat(x, c, axis=0)
        classes = ops.tile(ops.arange(c, dtype="int64"), (ops.shape(x)[0],))
        z, _, _ = pgd_loop(self._logits, tiled, classes, classes, eps=mcn.delta, norm=mcn.norm,
                           step_size=mcn.step_size or default_step_size(mcn.delta,
                                                                        mcn.num_steps),
                           num_steps=mcn.num_steps, random_start=False,
                           loss="ce" if mcn.method == "pgd" else "margin", bounds=mcn.bounds,
                           keep_best=True)
        log_probs = ops.log_softmax(self._logits(tiled + ops.stop_gradient(z - tiled)), axis=-1)
        values = ops.sum(log_probs * ops.one_hot(classes, c), axis=-1)
        return ops.reshape(values, (-1, c))


def base_attacks(args, deltas):
    """Attacks crafted on the base model: name -> (attack, budget); d2 for each MCN δ."""
    margin_step = max(EPS / 10, 2.5 * EPS / args.d1_steps)
    out = {
        "pgd": (PGD(eps=EPS, norm="linf", num_steps=20, seed=0), EPS),
        "cw": (CarliniWagnerLinf(num_steps=args.cw_steps, learning_rate=1e-2,
                                 initial_const=1e-5, const_factor=10.0, largest_const=20.0,
                                 initial_tau=EPS, tau_decrease=0.7, min_tau=1 / 256, eps=EPS,
                                 batch_size=args.n), EPS),
        "d1": (PGD(eps=EPS, norm="linf", num_steps=args.d1_steps, step_size=margin_step,
                   loss="margin", seed=3), EPS),
    }
    for delta in deltas:
        budget = EPS + delta
        out[f"d2_{delta:g}"] = (PGD(eps=budget, norm="linf", num_steps=args.d1_steps,
                                    step_size=max(budget / 10, 2.5 * budget / args.d1_steps),
                                    loss="margin", seed=4), budget)
    return out


def cascade_attack(name, args):
    if name == "bpda":
        return PGD(eps=EPS, norm="linf", num_steps=args.adaptive_steps, seed=1, batch_size=50)
    if name == "st":
        return PGD(eps=EPS, norm="linf", num_steps=args.adaptive_steps, seed=2, batch_size=50,
                   output="logits")
    if name == "danskin":
        return PGD(eps=EPS, norm="linf", num_steps=args.danskin_steps, step_size=EPS / 10,
                   seed=6, batch_size=50, loss="margin", output="logits")
    return SPSA(eps=EPS, norm="linf", num_steps=args.spsa_steps, step_size=0.01,
                perturbation_size=0.01, num_samples=args.spsa_samples, seed=5, batch_size=16)


def linf(a, b):
    return np.abs(a - b).reshape(len(a), -1).max(axis=1)


# --- the evaluation --------------------------------------------------------------------------

def select_correct(base, n, n_clean):
    """The first `n_clean` test images, and the first `n` the base classifies correctly."""
    x_all, y_all = md.datasets.load("fashion_mnist", "test")
    correct = np.argmax(probabilities(base, x_all), axis=1) == y_all
    idx = np.flatnonzero(correct)[:n]
    return x_all[:n_clean], y_all[:n_clean], x_all[idx], y_all[idx], idx


def evaluate_base(name, base, deltas, args):
    began = time.time()
    xc, yc, x, y, idx = select_correct(base, args.n, args.n_clean)
    probs_clean = probabilities(base, xc)
    out = {"indices": idx.tolist(), "y": y.tolist(),
           "clean_correct": (probs_clean.argmax(1) == yc).tolist(),
           "clean_confidence": probs_clean.max(1).tolist()}
    # Which quantile of the base's confidence p is (on the clean images it classifies right).
    conf_ok = probs_clean.max(1)[probs_clean.argmax(1) == yc]
    out["p_quantile"] = float(np.mean(conf_ok < P))
    adversarial, base_info = {}, {}
    for attack_name, (attack, budget) in base_attacks(args, deltas).items():
        t = time.time()
        x_adv = attack(base, x, y)
        probs = probabilities(base, x_adv)
        dist = linf(x_adv, x)
        fooled = (probs.argmax(1) != y) & (dist <= budget + 1e-5)
        wrong_conf = np.where(fooled, probs.max(1), 0.0)
        base_info[attack_name] = {"fooled": fooled.astype(int).tolist(), "budget": budget,
                                  "confidence_when_fooled": wrong_conf.tolist(),
                                  "seconds": time.time() - t}
        adversarial[attack_name] = x_adv
        log(f"{name}: {attack_name} on the base (budget {budget:g}): ASR {fooled.mean():.3f}, "
            f"mean wrong-class confidence {wrong_conf[fooled].mean() if fooled.any() else 0:.2f}"
            f" ({time.time() - t:.0f} s)")
    out["attacks_on_base"] = base_info
    out["seconds_base_attacks"] = time.time() - began
    return out, (xc, yc, x, y, idx), adversarial


def shell_labels(shell, x):
    """The shell's classes, the base's confidence at H(x), and whether the search reached its
    objective (NCN: some class reached p)."""
    _, classes, confidence, reached = shell.search(x, batch_size=100)
    return classes, confidence, reached


def evaluate_shell(shell_name, shell, data, adversarial, args):
    xc, yc, x, y, idx = data
    result = {"search": repr(shell.search_factor)}
    t = time.time()
    classes, confidence, reached = shell_labels(shell, xc)
    result["ms_per_image"] = 1000 * (time.time() - t) / len(xc)
    result["clean_correct"] = (classes == yc).astype(int).tolist()
    result["clean_confidence_after"] = confidence.tolist()
    result["clean_reached"] = reached.astype(int).tolist()
    log(f"  {shell_name}: clean accuracy {np.mean(classes == yc):.3f} on {len(xc)} "
        f"({result['ms_per_image']:.0f} ms per image)")
    # The n correct images: reuse the clean search where they are among the first n_clean.
    cls_ok, conf_ok = np.empty(len(y), dtype=np.int64), np.empty(len(y), dtype=np.float32)
    inside = idx < len(xc)
    cls_ok[inside], conf_ok[inside] = classes[idx[inside]], confidence[idx[inside]]
    if not inside.all():
        cls_ok[~inside], conf_ok[~inside], _ = shell_labels(shell, x[~inside])
    retained = cls_ok == y
    result["retained"] = retained.astype(int).tolist()
    result["confidence_after_correct"] = conf_ok.tolist()

    delta = shell_delta(shell)
    fed = {}
    for attack_name in ("pgd", "cw", "d1") + ((f"d2_{delta:g}",) if delta else ()):
        t = time.time()
        cls, conf, _ = shell_labels(shell, adversarial[attack_name])
        key = "d2" if attack_name.startswith("d2") else attack_name
        fed[key] = {"fooled": (cls != y).astype(int).tolist(), "confidence_after": conf.tolist()}
        log(f"  {shell_name}: {attack_name} fed to the shell: ASR {np.mean(cls != y):.3f} "
            f"({time.time() - t:.0f} s)")
    result["fed"] = fed

    alive = retained & ~np.asarray(fed["d1"]["fooled"], bool)
    cascade = {}
    for attack_name in CASCADE:
        status = np.full(len(y), -1)  # -1 not run, 0 fooled the shell, 1 survived
        if attack_name == "spsa" and shell_name == "ncn" and not args.ncn_spsa:
            cascade[attack_name] = {"status": status.tolist(), "skipped": True}
            continue
        if attack_name == "danskin" and shell_delta(shell) is None:
            cascade[attack_name] = {"status": status.tolist(), "skipped": True,
                                    "not_applicable": True}
            continue
        candidates = np.flatnonzero(alive)
        if attack_name == "spsa":
            candidates = candidates[candidates < args.n_spsa]
        t = time.time()
        if len(candidates):
            if attack_name == "bpda":
                target_model = adaptive_model(shell)[0]
            elif attack_name == "st":
                target_model = StraightThrough(shell)
            elif attack_name == "danskin":
                target_model = MCNValues(shell)
            else:
                target_model = shell
            x_adv = cascade_attack(attack_name, args)(target_model, x[candidates], y[candidates])
            cls, _, _ = shell_labels(shell, x_adv)
            fooled = (cls != y[candidates]) & (linf(x_adv, x[candidates]) <= EPS + 1e-5)
            status[candidates] = np.where(fooled, 0, 1)
            alive[candidates[fooled]] = False
        cascade[attack_name] = {"status": status.tolist(), "seconds": time.time() - t}
        log(f"  {shell_name}: {attack_name} fooled {int(np.sum(status == 0))} of "
            f"{len(candidates)} ({time.time() - t:.0f} s)")
    result["cascade"] = cascade
    result["worst"] = alive.astype(int).tolist()
    return result


def figures(args, bases, shells, data, adversarial, results, out_dir):
    """plot_shell_search (transfer PGD and straight-through examples) and
    plot_confidence_shift (clean and PGD inputs), for the PGD-AT base."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    base, (_, _, x, y, _) = bases["pgd_at"], data["pgd_at"]
    shell = shells["pgd_at"]["mcn_eps"]
    names = md.datasets.class_names("fashion_mnist")
    fooled = np.asarray(results["pgd_at"]["attacks_on_base"]["pgd"]["fooled"], bool)
    order = np.concatenate([np.flatnonzero(fooled), np.flatnonzero(~fooled)])[:4]
    x0, xa = x[order], adversarial["pgd_at"]["pgd"][order]
    p0, pa = probabilities(base, x0), probabilities(base, xa)
    z, cls, conf, _ = shell.search(xa)
    fig = Figure(figsize=(10, 2.3 * len(order)))
    md.visualization.plot_shell_search(
        x0, xa, z, {"clean": p0.argmax(1), "adversarial": pa.argmax(1), "shell": cls},
        {"clean": p0.max(1), "adversarial": pa.max(1), "shell": conf}, labels=y[order],
        class_names=names, num_examples=len(order),
        axes=fig.subplots(len(order), 4, squeeze=False))
    fig.suptitle("PGD-AT base, MCN δ = ε: transferred PGD-L∞ 0.1 (base fooled first)",
                 fontsize=8)
    fig.savefig(out_dir / "shell_search_pgd_at_mcn.png", dpi=120, bbox_inches="tight")

    names_at = list(results["pgd_at"]["shells"])
    fig = Figure(figsize=(4.5 * len(names_at), 6.4))
    grid = fig.subplots(2, len(names_at), squeeze=False)
    before_clean = probabilities(base, x).max(1)
    before_pgd = probabilities(base, adversarial["pgd_at"]["pgd"]).max(1)
    for j, name in enumerate(names_at):
        entry = results["pgd_at"]["shells"][name]
        md.visualization.plot_confidence_shift(
            before_clean, np.asarray(entry["confidence_after_correct"]), ax=grid[0, j],
            title=f"{SHELL_TITLES[name]}: clean")
        md.visualization.plot_confidence_shift(
            before_pgd, np.asarray(entry["fed"]["pgd"]["confidence_after"]), ax=grid[1, j],
            title=f"{SHELL_TITLES[name]}: PGD-L∞ 0.1 (transfer)")
    fig.tight_layout()
    fig.savefig(out_dir / "confidence_shift_pgd_at.png", dpi=120, bbox_inches="tight")
    log(f"figures written to {out_dir}")


# --- summary and rendering -------------------------------------------------------------------

def sign_test(a, b):
    """Two-sided exact sign test on paired booleans (see `_common.sign_test`)."""
    p, only_a, only_b = _common.sign_test(a, b)
    return {"p": p, "shell_only": only_a, "base_only": only_b}


def rate(flags):
    flags = np.asarray(flags, bool)
    k, n = int(flags.sum()), len(flags)
    low, high = clopper_pearson(k, n) if n else (0.0, 1.0)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"),
            "ci": [round(100 * low, 1), round(100 * high, 1)]}


def summarise(results):
    summary = {}
    for base_name, entry in results.items():
        on_base = entry["attacks_on_base"]
        base_any = np.logical_or.reduce([np.asarray(on_base[a]["fooled"], bool)
                                         for a in ("pgd", "cw", "d1")])
        s = {"clean": rate(entry["clean_correct"]), "p_quantile": entry["p_quantile"],
             "confidence": float(np.mean(entry["clean_confidence"])),
             "base_asr": {a: rate(v["fooled"]) for a, v in on_base.items()},
             "base_robust": rate(~base_any), "shells": {}}
        for shell_name, r in entry["shells"].items():
            fed = {a: rate(v["fooled"]) for a, v in r["fed"].items()}
            cascade = {}
            for a, v in r["cascade"].items():
                status = np.asarray(v["status"])
                cascade[a] = {"tried": int(np.sum(status >= 0)), "broke": int(np.sum(status == 0)),
                              "skipped": bool(v.get("skipped", False)),
                              "not_applicable": bool(v.get("not_applicable", False))}
            worst = np.asarray(r["worst"], bool)
            all_eps = worst & ~np.asarray(r["fed"]["pgd"]["fooled"], bool) \
                & ~np.asarray(r["fed"]["cw"]["fooled"], bool)
            s["shells"][shell_name] = {
                "clean": rate(r["clean_correct"]), "retained": rate(r["retained"]),
                "reached": float(np.mean(r["clean_reached"])), "fed": fed, "cascade": cascade,
                "worst": rate(worst), "worst_all_eps": rate(all_eps),
                "paired": sign_test(worst, ~base_any),
                "ms_per_image": r["ms_per_image"],
                "confidence": {"before": float(np.mean(entry["clean_confidence"])),
                               "after": float(np.mean(r["clean_confidence_after"]))}}
        summary[base_name] = s
    return summary


def pct(value):
    return f"{100 * value:.1f}"


def ci(item):
    return f"{pct(item['rate'])} [{item['ci'][0]:.1f}, {item['ci'][1]:.1f}]"


def clean_table(payload):
    s, n_clean = payload["summary"], payload["n_clean"]
    lines = [f"| base | model | clean accuracy (first {n_clean} test images) | mean confidence "
             "of the base at x → at H(x) | search (ms per image) |", "|---|---|---|---|---|"]
    for b in BASES:
        lines.append(f"| {BASE_TITLES[b]} | base alone | {ci(s[b]['clean'])} | "
                     f"{s[b]['confidence']:.2f} | |")
        for name in s[b]["shells"]:
            e = s[b]["shells"][name]
            reached = "" if name != "ncn" else f" (p reached on {pct(e['reached'])} %)"
            lines.append(f"| {BASE_TITLES[b]} | {SHELL_TITLES[name]} | {ci(e['clean'])} | "
                         f"{e['confidence']['before']:.2f} → {e['confidence']['after']:.2f}"
                         f"{reached} | {e['ms_per_image']:.0f} |")
    return lines


def transfer_table(payload):
    s, n = payload["summary"], payload["n"]
    lines = [f"| base | shell | retained accuracy (n = {n}) | PGD-L∞ 20: ASR base | "
             "PGD-L∞ 20: ASR shell | CW-L∞: ASR base | CW-L∞: ASR shell |",
             "|---|---|---|---|---|---|---|"]
    for b in BASES:
        asr = s[b]["base_asr"]
        for name in s[b]["shells"]:
            e = s[b]["shells"][name]
            lines.append(f"| {BASE_TITLES[b]} | {SHELL_TITLES[name]} | {ci(e['retained'])} | "
                         f"{pct(asr['pgd']['rate'])} | {pct(e['fed']['pgd']['rate'])} | "
                         f"{pct(asr['cw']['rate'])} | {pct(e['fed']['cw']['rate'])} |")
    lines.append(f"| *paper, CIFAR-10* | *MCN (CW-L∞ search), Madry ResNet* | *{PAPER['retained']}*"
                 f" (n = {PAPER['n']}) | | | *{PAPER['base_asr']}* | *{PAPER['shell_asr']}* |")
    return lines


def cascade_cell(item, n_spsa=None):
    if item.get("not_applicable"):
        return "— (MCN only)"
    if item["skipped"]:
        return "not run (cost)"
    text = f"+{item['broke']} / {item['tried']}"
    return text if n_spsa is None else text + f" (of the first {n_spsa})"


def adaptive_table(payload):
    s, n = payload["summary"], payload["n"]
    lines = [f"| base | shell | (d1) margin-PGD on the base: ASR shell | (b) BPDA | "
             "(b′) straight-through at H(x) | (b″) per-class Danskin margin | "
             f"(c) SPSA, first {payload['n_spsa']} | "
             f"**robust accuracy, worst case (b–d1)**, n = {n} | robust accuracy, also "
             "counting the transfers (a) | (d2) ASR at ε + δ (LARGER threat) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in BASES:
        sb = s[b]
        lines.append(f"| {BASE_TITLES[b]} | no shell (white-box PGD, CW, d1 on the base) | "
                     f"{pct(sb['base_asr']['d1']['rate'])} | | | | | "
                     f"**{ci(sb['base_robust'])}** | | |")
        for name, e in sb["shells"].items():
            d2 = pct(e["fed"]["d2"]["rate"]) if "d2" in e["fed"] else "— (no radius)"
            lines.append(f"| {BASE_TITLES[b]} | {SHELL_TITLES[name]} | "
                         f"{pct(e['fed']['d1']['rate'])} | {cascade_cell(e['cascade']['bpda'])} | "
                         f"{cascade_cell(e['cascade']['st'])} | "
                         f"{cascade_cell(e['cascade']['danskin'])} | "
                         f"{cascade_cell(e['cascade']['spsa'])} | **{ci(e['worst'])}** | "
                         f"{ci(e['worst_all_eps'])} | {d2} |")
    return lines


def setup_text(payload):
    c = payload["config"]
    q = {b: payload["summary"][b]["p_quantile"] for b in BASES}
    return (
        f"Written by `models/model_shells.py` (Fashion-MNIST, L∞ ε = {EPS:g}; "
        f"{payload['seconds'] / 60:.0f} min on 2 shared CPU cores). **Bases**: the cached "
        f"`zoo.small_cnn(width={c['width']})` classifiers of `models/rbf_cnn.py` ({c['epochs']} "
        f"epochs on the first {c['train_size']:,} training images): PGD-AT (Madry, PGD-L∞ 0.1, "
        "7 steps; the paper's postulate needs a robust base and the authors used Madry's "
        "CIFAR-10 ResNet) and the plain CNN as a contrast. **Shells** (`ModelShell`): MCN L∞ "
        f"with δ = ε and δ = ε/2 (`method=\"pgd\"`, {c['mcn_steps']} PGD steps per class, all 10 "
        "classes batched; on 100 images 5 steps and 20 steps gave the same decision on 100 % of "
        "clean and 99 % of PGD inputs) and NCN L2 with p = 0.9 (augmented Lagrangian, "
        f"{c['ncn_stages']} stages of {c['ncn_steps']} Adam steps, rate {c['ncn_step_size']:g}). "
        "p = 0.9 was given, not tuned: the PGD-AT base is less confident than p on "
        f"{100 * q['pgd_at']:.0f} % of the first {payload['n_clean']} test images it classifies "
        f"correctly (the CNN on {100 * q['base']:.0f} %), so p is the "
        f"{q['pgd_at']:.2f} quantile of its confidence on natural points. **Protocol** (the "
        f"paper's): the first {payload['n']} test images the base classifies correctly (the "
        f"paper: 150 CIFAR-10 points). ASR = share of them the shell (or base) misclassifies "
        "after the attack; the paper counted a shell that was already wrong on the clean point "
        "and stays wrong as robust, we count it as fooled. **Attacks crafted on the base** (full "
        "gradients): PGD-L∞ 20 steps (random start); untargeted CW-L∞ (minimal L∞ distortion, "
        f"{c['cw_steps']} Adam steps per c, c ×10 from 1e-5, τ ×0.7 from 0.1; valid only if "
        f"≤ ε; the authors' attack); (d1) PGD with the CW margin loss, {c['d1_steps']} steps "
        "(keeps the most confidently wrong point); (d2) the same at ε + δ. **Adaptive attacks "
        "on the shell**, run as a cascade on the examples the shell classifies correctly and "
        "that d1 and the earlier ones did not fool (cells: +examples newly fooled / examples "
        f"tried): (b) BPDA, PGD {c['adaptive_steps']} steps on `adaptive_model(shell)` (the "
        "shell forward, the base's gradient at x'); (b′) straight-through at H(x'): PGD "
        f"{c['adaptive_steps']} steps on F(x' + stop_gradient(H(x') − x')), the base's gradient "
        "at the searched point; (b″) MCN only: PGD with the margin loss on the 10 values the "
        "shell compares, v_t = log F(z_t)_t (z_t the class-t search, recomputed exactly as in "
        "`MCN.find`), each differentiated at its own z_t (Danskin's theorem for the inner max), "
        "so the attack pushes a wrong class's best confidence in the δ-ball above the true "
        f"class's; {c['danskin_steps']} steps of ε/10 (in a first run, 10 steps of 2.5ε/10 "
        "fooled 4 of the 25 examples tried on the CNN shell and 3 of 82 on PGD-AT MCN δ = ε); "
        f"(c) SPSA on the shell ({c['spsa_steps']} Adam "
        f"steps of {c['spsa_samples']} directions, on the survivors among the first "
        f"{c['n_spsa']}; not on NCN, whose search costs 3-4x MCN's). Worst case: correct on x "
        "and fooled by none of (b), (b′), (b″), (c), (d1); the next column also counts the "
        "transfers (a), which are attacks within ε too. Brackets: 95% Clopper–Pearson "
        "intervals; *p (paired)*: two-sided exact sign test on the examples where exactly one "
        "of shell and base survives. **Time**: the numbers below took "
        f"{payload['seconds'] / 60:.0f} min; on the same machine under a load of ~6 other "
        "processes the searches ran 3x slower.")


def paired(entry):
    t = entry["paired"]
    return (f"shell-only survivors {t['shell_only']}, base-only {t['base_only']}, "
            f"p = {t['p']:.2g}")


def better_than_base(entry):
    t = entry["paired"]
    return t["p"] < 0.05 and t["shell_only"] > t["base_only"]


def worse_than_base(entry):
    t = entry["paired"]
    return t["p"] < 0.05 and t["shell_only"] < t["base_only"]


def breakers(entry):
    """Which adaptive attacks fooled the shell, as text: 'd1 k, BPDA k, ...'."""
    names = {"bpda": "BPDA", "st": "straight-through", "danskin": "Danskin", "spsa": "SPSA"}
    parts = [f"d1 {entry['fed']['d1']['k']}"]
    parts += [f"{names[a]} {v['broke']}" for a, v in entry["cascade"].items()
              if not v["skipped"]]
    return ", ".join(parts)


def reading(payload):
    s, n = payload["summary"], payload["n"]
    at, cnn = s["pgd_at"], s["base"]
    mcn, half, ncn = (at["shells"][k] for k in ("mcn_eps", "mcn_half", "ncn"))
    cnn_mcn = cnn["shells"]["mcn_eps"]
    lost = ncn["retained"]["n"] - ncn["retained"]["k"]
    cw_base, cw_shell = at["base_asr"]["cw"]["rate"], mcn["fed"]["cw"]["rate"]
    pgd_base, pgd_shell = at["base_asr"]["pgd"]["rate"], mcn["fed"]["pgd"]["rate"]
    lines = [
        "- **Non-adaptive (the paper's set-up)**: with the PGD-AT base, CW-L∞ crafted on the "
        f"base fools the base on {pct(cw_base)} % of the {n} points and the MCN δ = ε shell on "
        f"{pct(cw_shell)} %; for PGD-L∞ it is {pct(pgd_base)} → {pct(pgd_shell)} %. The paper "
        f"(CIFAR-10, CW-L∞) reports {PAPER['base_asr']} → {PAPER['shell_asr']} % and calls it "
        "an almost perfect defense. Minimal-distortion CW examples stop just across the "
        "boundary, at low confidence, where a δ-search walks back; PGD examples go deeper "
        + ("and the shell does not undo them." if pgd_shell >= 0.8 * pgd_base
           else "and are undone less often.")
        + " Our base is already robust on most correct points (PGD-L∞ fools it on "
        f"{pct(pgd_base)} %), so there is little for the shell to repair; on the plain CNN "
        f"the shell undoes more transfers (CW {pct(cnn['base_asr']['cw']['rate'])} → "
        f"{pct(cnn['shells']['mcn_eps']['fed']['cw']['rate'])} %, PGD "
        f"{pct(cnn['base_asr']['pgd']['rate'])} → "
        f"{pct(cnn['shells']['mcn_eps']['fed']['pgd']['rate'])} %).",
        "- **Adaptive (PGD-AT base)**: worst-case robust accuracy MCN δ = ε "
        f"{ci(mcn['worst'])} %, δ = ε/2 {ci(half['worst'])} %, NCN {ci(ncn['worst'])} %, "
        f"against {ci(at['base_robust'])} % for the base alone under white-box PGD, CW and d1 "
        f"(paired: {paired(mcn)}; {paired(half)}; {paired(ncn)}). "
        + ("None of the shells is significantly more robust than its base: the robustness is "
           "the adversarially trained base's. "
           if not any(better_than_base(e) for e in (mcn, half, ncn)) else "")
        + ("NCN is significantly less robust than the base alone. "
           if worse_than_base(ncn) else "")
        + f"Examples fooled per attack (cascade), MCN δ = ε: {breakers(mcn)}; NCN: "
        f"{breakers(ncn)}. The transfers add no example beyond these "
        + ("(the next column equals the worst case)."
           if all(e["worst_all_eps"]["k"] == e["worst"]["k"] for e in (mcn, half, ncn))
           else "on some shells (see the next column)."),
        "- **Contrast, plain CNN**: MCN δ = ε keeps "
        f"{ci(cnn_mcn['worst'])} % against {ci(cnn['base_robust'])} % for the CNN alone "
        f"(paired: {paired(cnn_mcn)}), at {pct(cnn['clean']['rate'] - cnn_mcn['clean']['rate'])}"
        f" points of clean accuracy; fooled per attack: {breakers(cnn_mcn)}. With δ = ε the "
        "search ball around x' always contains x, where the CNN is confident in the true class, "
        "so a wrong class must be even more confident somewhere within ε + δ of x. "
        + ("The shell does help this base on the paired test, but "
           if better_than_base(cnn_mcn) else "")
        + f"{pct(cnn_mcn['worst']['rate'])} % is far below the PGD-AT base alone "
        f"({pct(at['base_robust']['rate'])} %), and it is the least certain number here: the "
        "Danskin attack gained with more steps (see the set-up), so stronger attacks may "
        "lower it further.",
        "- **Larger threat (d2, ε + δ; not robustness at ε)**: margin-PGD on the base at "
        f"{2 * EPS:g} fools the PGD-AT base on {pct(at['base_asr'][f'd2_{EPS:g}']['rate'])} % "
        f"and the MCN δ = ε shell on {pct(mcn['fed']['d2']['rate'])} %; at {1.5 * EPS:g}, "
        f"{pct(at['base_asr'][f'd2_{EPS / 2:g}']['rate'])} → {pct(half['fed']['d2']['rate'])} "
        f"% for δ = ε/2; on the CNN at {2 * EPS:g}, "
        f"{pct(cnn['base_asr'][f'd2_{EPS:g}']['rate'])} → {pct(cnn_mcn['fed']['d2']['rate'])} "
        "% (non-adaptive: crafted on the base).",
        f"- **NCN p = {P:g}**: clean accuracy {ci(ncn['clean'])} % against {ci(at['clean'])} % "
        f"for the PGD-AT base alone, retained {ci(ncn['retained'])} % of the points the base "
        f"gets right. p is above the PGD-AT base's confidence on {100 * at['p_quantile']:.0f} % "
        "of the natural points it classifies correctly, so the search runs on most inputs "
        f"(p reached on {pct(ncn['reached'])} % of the clean images with this budget) and the "
        f"nearest confident point is sometimes of another class ({lost} of the {n} correct "
        "points lost), which the postulate rules out "
        "for a good base: a base adversarially trained at this budget is not confident enough "
        "on natural points for p = 0.9. Any x' where the base is ≥ p confident in a wrong "
        "class is returned unchanged, so d1 alone fools NCN on "
        f"{pct(ncn['fed']['d1']['rate'])} % (the base alone: "
        f"{pct(at['base_asr']['d1']['rate'])} %).",
        "- **Not comparable number for number** with the paper: Fashion-MNIST and a small CNN "
        "trained 5 epochs, not CIFAR-10 and Madry's ResNet; MCN by PGD (5 steps per class) in "
        "a hard δ-ball, not the authors' CW-L∞ search with a soft hinge; "
        f"{n} points (wide intervals); short adaptive attacks "
        f"({payload['config']['adaptive_steps']} to {payload['config']['danskin_steps']} PGD "
        "steps, "
        f"{payload['config']['spsa_steps']} SPSA steps on at most {payload['n_spsa']} points), "
        "so each worst case is an upper bound on the shell's true robust accuracy.",
    ]
    return "\n".join(lines)


def render(payload):
    return "\n".join([
        "## model_shells", "", setup_text(payload), "",
        "### Clean accuracy", "", *clean_table(payload), "",
        f"### Table 1 pattern, NON-ADAPTIVE (attacks crafted on the base, fed to the shell; "
        f"ASR in %, among the first {payload['n']} points the base classifies correctly)", "",
        "These are the paper's set-up and are **not** robustness numbers for the shell.", "",
        *transfer_table(payload), "",
        "### Adaptive attacks on the shell (ASR in %, robust accuracy in % with 95% CI)", "",
        *adaptive_table(payload), "",
        "### Reading", "", reading(payload), ""])


# --- main ------------------------------------------------------------------------------------

def run(args):
    out_dir = ROOT / "models" / "results" / "model_shells"
    if args.quick:
        args.n, args.n_clean, args.n_spsa = 8, 16, 4
        args.mcn_steps, args.ncn_steps, args.ncn_stages = 2, 3, 1
        args.adaptive_steps, args.d1_steps, args.cw_steps = 2, 10, 5
        args.danskin_steps = 3
        args.spsa_steps, args.spsa_samples = 2, 2
        out_dir = out_dir / "quick"
    keras.utils.set_random_seed(args.seed)
    bases = load_bases(args)
    results, shells, data, adversarial = {}, {}, {}, {}
    for base_name in BASES:
        log(f"== {base_name}")
        shells[base_name] = make_shells(bases[base_name], shells_of(base_name, args), args)
        deltas = [shell_delta(s) for s in shells[base_name].values() if shell_delta(s)]
        entry, data[base_name], adversarial[base_name] = evaluate_base(
            base_name, bases[base_name], deltas, args)
        entry["shells"] = {}
        for shell_name, shell in shells[base_name].items():
            t = time.time()
            entry["shells"][shell_name] = evaluate_shell(shell_name, shell, data[base_name],
                                                         adversarial[base_name], args)
            entry["shells"][shell_name]["seconds"] = time.time() - t
            log(f"  {shell_name}: done in {time.time() - t:.0f} s")
        results[base_name] = entry
    figures(args, bases, shells, data, adversarial, results, out_dir)
    return {"config": vars(args), "n": args.n, "n_clean": args.n_clean, "n_spsa": args.n_spsa,
            "summary": summarise(results), "results": results,
            "seconds": time.time() - STARTED}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="correctly classified test images")
    parser.add_argument("--n-clean", type=int, default=200, help="test images for clean accuracy")
    parser.add_argument("--n-spsa", type=int, default=30, help="SPSA on the survivors among "
                        "the first N correct images")
    parser.add_argument("--mcn-steps", type=int, default=5)
    parser.add_argument("--ncn-steps", type=int, default=10)
    parser.add_argument("--ncn-stages", type=int, default=2)
    parser.add_argument("--ncn-step-size", type=float, default=0.02)
    parser.add_argument("--adaptive-steps", type=int, default=10, help="BPDA/straight-through")
    parser.add_argument("--danskin-steps", type=int, default=50,
                        help="steps (of ε/10) of the per-class Danskin attack on MCN shells")
    parser.add_argument("--d1-steps", type=int, default=100)
    parser.add_argument("--cw-steps", type=int, default=30)
    parser.add_argument("--spsa-steps", type=int, default=5)
    parser.add_argument("--spsa-samples", type=int, default=8)
    parser.add_argument("--ncn-spsa", action="store_true",
                        help="also run SPSA on the NCN shell (the costliest search; off)")
    parser.add_argument("--contrast-shells", nargs="+", default=["mcn_eps"], choices=SHELLS,
                        help="shells evaluated on the plain CNN (all three on PGD-AT)")
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes no results")
    parser.add_argument("--cache-dir", default=str(ROOT / "models" / "results" / "rbf_cnn"))
    parser.add_argument("--from-json", action="store_true",
                        help="only re-render the section from models/results/model_shells.json")
    args = parser.parse_args(argv)
    json_path = ROOT / "models" / "results" / "model_shells.json"
    payload = json.loads(json_path.read_text()) if args.from_json else run(args)
    text = render(payload)
    print(text)
    if args.quick:
        log("quick run: nothing written to RESULTS.md or the JSON")
        return
    if not args.from_json:
        json_path.write_text(json.dumps(payload))
    update_section(ROOT / "models" / "RESULTS.md", "model_shells", text,
                   "# Results of the recipes in models/\n")
    log("wrote models/RESULTS.md (## model_shells)"
        + ("" if args.from_json else " and models/results/model_shells.json"))


if __name__ == "__main__":
    main()
