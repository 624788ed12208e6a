"""On-manifold attacks: PGD on a generator's latent codes (OM-FGSM / OM-PGD), and GAT's
sign-gradient attack on a style-based generator's style and noise inputs.

The image is `G(w)`; the attack perturbs the latent `w` inside an eta-ball and never touches
pixels, so every adversarial example lies on the generator's manifold. It is the very PGD loop
of image space (`pgd_loop`) run on `w -> classifier(G(w))`: no second implementation.

Reference:
    Lin, Lau, Levine, Chellappa, Feizi, "Dual Manifold Adversarial Robustness: Defense against
    Lp and non-Lp Adversarial Attacks", NeurIPS 2020, eq. (5) and (9).
"""


from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, resolve_jit_compile
from manidefense.attacks.gradients import inference, logits_function, weak_reference
from manidefense.attacks.objectives import objective
from manidefense.attacks.pgd import PGD, pgd_loop
from manidefense.validation import (
    check_bounds,
    check_choice,
    check_labels,
    check_non_negative,
    check_positive,
    check_positive_int,
)

if TYPE_CHECKING:
    from manidefense.zoo.style import StyleGenerator


@keras.saving.register_keras_serializable(package="manidefense")
class LatentPGD(PGD):
    """PGD in a generator's latent space: `max_{||λ|| <= eta} L(f(G(w + λ)), y)` (DMAT eq. 5).

    Called as `attack(classifier, w, y, target=None)` on latent codes `w` (e.g. from an encoder
    or `manifold.projection.project`); returns adversarial latents. `generate` also returns
    the images `G(w_adv)`. `num_steps=1` with `step_size=eta` and no random start is OM-FGSM.

    Args:
        decoder: a Keras model (or callable) mapping latents `(batch, ...)` to images; run in
            inference mode.
        eta: budget in `norm` in latent units (DMAT: 0.02 in L∞ on StyleGAN's W+; a VAE's
            latents have unit prior variance, so useful values there are ~0.1-1). There is no
            pixel budget: `G(w_adv)` may differ from `G(w)` by any amount in pixels.
        norm: `"linf"`, `"l2"` or `"l1"`, measured on the latent vector.
        step_size: default `2.5 * eta / num_steps`. DMAT: 0.005 for eta 0.02.
        num_steps: DMAT trains with 5 (OM-PGD-5) and evaluates with 50.
        random_start: start uniformly inside the eta-ball (advertorch's default, as DMAT).
        latent_bounds: optional box `(low, high)` for the latents (Stutz et al. clip to the
            range of the training codes); unbounded by default.
        **kwargs: `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`, `jit_compile`,
            `output` of `Attack` (not `bounds`: images are whatever the decoder makes).

    Example:
    >>> attack = manidefense.attacks.LatentPGD(vae.decoder, eta=0.5, num_steps=10, seed=0)
    >>> w_adv, x_adv = attack.generate(classifier, vae.encode(x), y)
    """

    _input_name = "w"

    def __init__(self, decoder: keras.Model | Callable, eta: float = 0.02, norm: str = "linf",
                 step_size: float | None = None, num_steps: int = 5, random_start: bool = True,
                 latent_bounds: tuple[float, float] | None = None, l1_sparsity: float = 0.99,
                 **kwargs):
        if "bounds" in kwargs:
            raise ValueError(
                "Argument `bounds` does not apply to LatentPGD: it bounds images, and a latent "
                "attack's images are whatever the decoder produces. Use `latent_bounds` to box "
                f"the latents. Received: bounds={kwargs['bounds']!r}"
            )
        if not callable(decoder):
            raise ValueError(
                "Argument `decoder` must be a Keras model or callable mapping latents to "
                f"images. Received: decoder={decoder!r}"
            )
        eta = check_non_negative("eta", eta)
        super().__init__(eps=eta, norm=norm, step_size=step_size, num_steps=num_steps,
                         random_start=random_start, l1_sparsity=l1_sparsity, **kwargs)
        self.decoder = decoder
        self.latent_bounds = (None if latent_bounds is None
                              else check_bounds(latent_bounds, "latent_bounds"))
        self.bounds = self.latent_bounds or norms.UNBOUNDED

    @property
    def eta(self) -> float:
        """The latent budget (the `eps` the PGD loop runs with)."""
        return self.eps

    def _logits_function(self, model):
        classify = logits_function(model, self.output)
        decoder = self.decoder

        def decoded_logits(w):
            return classify(_decode(decoder, w))

        return decoded_logits

    def _probe(self, model, w_sample):
        images = _decode(self.decoder, ops.convert_to_tensor(w_sample, "float32"))
        return super()._probe(model, images)

    def generate(self, model: keras.Model, w: ArrayLike, y: ArrayLike,
                 target: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Runs the attack and decodes: returns `(w_adv, G(w_adv))` as numpy arrays.

        Args:
            model: the classifier attacked through the decoder.
            w: latent codes `(batch, ...)`, e.g. `vae.encode(x)`.
            y: integer labels of `G(w)`.
            target: optional target classes (a targeted attack).

        Returns:
            `(w_adv, x_adv)`: the adversarial latents and their decoded images.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=8)
        >>> attack = manidefense.attacks.LatentPGD(vae.decoder, eta=0.5, num_steps=5, seed=0)
        >>> w_adv, x_adv = attack.generate(model, vae.encode(x), y)
        >>> w_adv.shape, x_adv.shape
        ((8, 8), (8, 28, 28, 1))
        """
        w_adv = np.asarray(self(model, w, y, target))
        return w_adv, self.decode(w_adv)

    def decode(self, w: ArrayLike) -> np.ndarray:
        """`G(w)` in batches of `batch_size`, as a float32 numpy array.

        Args:
            w: latent codes `(batch, ...)`.

        Returns:
            The decoded images, float32.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=8)
        >>> attack = manidefense.attacks.LatentPGD(vae.decoder, eta=0.5)
        >>> attack.decode(np.zeros((2, 8), "float32")).shape
        (2, 28, 28, 1)
        """
        w, n = np.asarray(w, dtype=np.float32), self.batch_size
        parts = [ops.convert_to_numpy(_decode(self.decoder, ops.convert_to_tensor(w[i:i + n])))
                 for i in range(0, len(w), n)]
        return np.concatenate(parts).astype(np.float32)

    def get_config(self):
        config = super().get_config()
        config.pop("bounds", None)
        config["decoder"] = keras.saving.serialize_keras_object(self.decoder)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        config["decoder"] = (getattr(self.decoder, "name", None)
                             or getattr(self.decoder, "__name__", type(self.decoder).__name__))
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"LatentPGD({args})"


def _decode(decoder, w):
    return ops.cast(inference(decoder, w), "float32")


# === GAT: sign-gradient steps on a style-based generator's style and noise inputs ===

PERTURB = ("style", "noise")
TARGETS = ("least_likely", None)


@dataclasses.dataclass
class GenerativeExamples:
    """What `GenerativeAttack` returns (numpy arrays, one row per example).

    Attributes:
        styles, noises: the adversarial latents, one array per synthesis layer (feed them to
            `generator.synthesize`).
        images: `g(styles, noises)`, the adversarial images.
        iterations: sign steps each example took until it fooled the classifier (0: the
            clean sample was already misclassified); `max_iterations` when it never did.
        success: whether the classifier was fooled (untargeted and least-likely modes: the
            prediction differs from `y`; with a user target: it equals the target).
        target: the classes descended towards (least-likely or user targets), or None.

    Example:
    >>> result = manidefense.attacks.GenerativeAttack(gen)(classifier, (styles, noises), labels)
    >>> print(f"fooled {result.success.mean():.0%} in {result.iterations.mean():.1f} steps")
    >>> styles_adv, noises_adv = result.latents
    >>> same = gen.synthesize(styles_adv, noises_adv)  # == result.images
    """

    styles: list
    noises: list
    images: np.ndarray
    iterations: np.ndarray
    success: np.ndarray
    target: np.ndarray | None

    @property
    def latents(self) -> tuple[list, list]:
        """`(styles, noises)`, the form `GenerativeAttack` and `synthesize` take."""
        return self.styles, self.noises


def generative_loop(logits_fn, flat, labels, target, *, step_vector, max_iterations,
                    least_likely, loss="ce"):
    """GAT's inner loop (eqs. 1–4) on flat latents, graph-safe: the library's `pgd_loop` with
    per-coordinate L∞ sign steps (`step_vector`, zero outside the chosen layers), no ball, no
    box, no random start, and examples frozen at their first success.

    Returns `(flat_adv, success, iterations, target)`; in least-likely mode `target` holds the
    least-likely class of the clean prediction (the direction; success is misclassification).
    """
    flat = ops.cast(flat, "float32")
    if least_likely:
        direction = ops.cast(ops.argmin(logits_fn(flat), axis=-1), "int64")

        def objective_fn(logits, y, _target):
            return objective(loss, logits, y, direction)
        run_loss, run_target = objective_fn, None
    else:
        direction, run_loss, run_target = target, loss, target
    adv, _, success, iterations = pgd_loop(
        logits_fn, flat, labels, run_target, eps=math.inf, norm="linf",
        step_size=ops.cast(step_vector, "float32"), num_steps=max_iterations,
        random_start=False, loss=run_loss, bounds=norms.UNBOUNDED, stop_on_success=True)
    return adv, success, iterations, direction


@keras.saving.register_keras_serializable(package="manidefense")
class GenerativeAttack(Attack):
    """GAT's attack on a style-based generator's style and noise inputs (Poursaeed et al.).

    Called as `attack(classifier, (styles, noises), y, target=None)` on latents of a
    `zoo.StyleGenerator` (from `generator.sample`, or real images embedded with
    `generator.embed`, §3.1.1). Each iteration takes a sign-gradient step on the chosen
    tensors — `style_step · sign(∇_y J)` and `noise_step · sign(∇_η J)` (eqs. 1–4) — through
    `classifier(g(y, η))`; an example stops as soon as the classifier is fooled, at most
    `max_iterations` steps. There is no norm bound on the latents or the images: the
    iteration cap is the only limit (GAT's realism threshold). Tensors outside `layers` and
    `perturb` do not change (bit for bit).

    Objective `J` is `loss` (cross-entropy by default): untargeted (`target=None`) ascends it
    on the true class (eqs. 1–2); `target="least_likely"` (GAT's default) descends it towards
    the least-likely class of the clean prediction (eqs. 3–4), success still meaning "fooled"
    (prediction ≠ y); a `target` array given at call time descends towards those classes and
    success means the prediction equals them.

    Args:
        generator: a `zoo.StyleGenerator` (anything with its `synthesize`, `flatten`,
            `unflatten`, `style_shapes`, `noise_shapes` and `num_layers`).
        perturb: `"style"`, `"noise"` or both (a sequence): which inputs move.
        layers: synthesis layer indices (0 = coarsest) to perturb, or None for all; e.g.
            `generator.layer_groups[0]` for the coarse group (high-level changes) and
            `generator.layer_groups[-1]` for the fine one (texture).
        style_step: ε, the sign-step length on the style tensors (GAT: 0.004 on CelebA-HQ,
            0.005 on LSUN; a generator with few channels per layer needs larger steps).
        noise_step: δ, the step length on the noise tensors (GAT: 0.1 / 0.2). Noise in a layer
            whose learned noise factors B are zero has no gradient and cannot move.
        max_iterations: the iteration cap (GAT: 10).
        target: `"least_likely"` or None (untargeted).
        **kwargs: `batch_size`, `loss` (`"ce"`, `"margin"` or `"dlr"`), `verbose`,
            `jit_compile`, `output` of `Attack`. The attack is deterministic: no `seed`,
            `bounds` or restarts.

    Returns (from a call): a `GenerativeExamples` with the adversarial `styles`, `noises`,
    `images`, the `iterations` each example took and the `success` mask.

    Example:
    >>> styles, noises, _ = gen.sample(labels, seed=0)
    >>> attack = manidefense.attacks.GenerativeAttack(gen, perturb="style",
    ...                                               layers=gen.layer_groups[0])
    >>> result = attack(classifier, (styles, noises), labels)
    >>> result.success.mean(), result.iterations[result.success].mean()

    Reference:
        Poursaeed, Jiang, Yang, Belongie, Lim, "Robustness and Generalization via Generative
        Adversarial Training", ICCV 2021, eqs. 1–4 and §4.1.
    """

    _input_name = "latents"

    def __init__(self, generator: StyleGenerator, perturb: str | Sequence[str] = ("style", "noise"),
                 layers: int | Sequence[int] | None = None, style_step: float = 0.004,
                 noise_step: float = 0.1, max_iterations: int = 10,
                 target: str | None = "least_likely", **kwargs):
        for name in ("bounds", "seed"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"Argument `{name}` does not apply to GenerativeAttack: it is deterministic "
                    "and its latents are unbounded (the iteration cap is the only limit). "
                    f"Received: {name}={kwargs[name]!r}")
            kwargs.pop(name, None)
        if kwargs.get("num_restarts", 1) != 1:
            raise ValueError("Argument `num_restarts` must be 1: GenerativeAttack is "
                             "deterministic, every restart would be the same. Received: "
                             f"num_restarts={kwargs['num_restarts']!r}")
        super().__init__(**kwargs)
        missing = [a for a in ("synthesize", "flatten", "unflatten", "style_shapes",
                               "noise_shapes", "num_layers") if not hasattr(generator, a)]
        if missing:
            raise ValueError(
                "Argument `generator` must be a style-based generator with explicit style and "
                f"noise inputs (manidefense.zoo.StyleGenerator). Received: {generator!r} "
                f"without {', '.join(missing)}")
        self.generator = generator
        self.perturb = check_perturb(perturb)
        self.layers = check_layers(layers, generator.num_layers)
        self.style_step = check_positive("style_step", style_step)
        self.noise_step = check_positive("noise_step", noise_step)
        self.max_iterations = check_positive_int("max_iterations", max_iterations)
        self.target = check_choice("target", target, TARGETS)
        self._compiled = {}

    def step_vector(self, layers: int | Sequence[int] | None = None) -> np.ndarray:
        """Per-coordinate step lengths over `generator.flatten`'s layout: `style_step` on the
        chosen style tensors, `noise_step` on the chosen noise tensors, 0 elsewhere.

        Args:
            layers: synthesis layer indices to step on; None uses the attack's `layers`.

        Returns:
            A float32 vector of length `generator.latent_size`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> attack = manidefense.attacks.GenerativeAttack(gen, perturb="style")
        >>> steps = attack.step_vector(layers=gen.layer_groups[0])
        >>> steps.shape == (gen.latent_size,), int((steps > 0).sum())  # 64 + 64 channels, x2
        (True, 256)
        """
        layers = self.layers if layers is None else check_layers(layers,
                                                                 self.generator.num_layers)
        gen, parts = self.generator, []
        for kind, shapes, step in (("style", gen.style_shapes, self.style_step),
                                   ("noise", gen.noise_shapes, self.noise_step)):
            for i, shape in enumerate(shapes):
                on = kind in self.perturb and i in layers
                parts.append(np.full(int(np.prod(shape)), step if on else 0.0, np.float32))
        return np.concatenate(parts)

    def _logits_function(self, model):
        return generated_logits(self.generator, logits_function(model, self.output))

    def __call__(self, model: keras.Model, latents: tuple[Sequence, Sequence], y: ArrayLike,
                 target: ArrayLike | None = None) -> GenerativeExamples:
        styles, noises = self.generator.check_latents(latents, "latents")
        num = len(styles[0])
        y_np = check_labels(y, num, "y")
        t_np = None if target is None else check_labels(target, num, "target")
        flat = np.asarray(self.generator.flatten(styles, noises), np.float32)
        num_classes, kind = self._probe(model, np.asarray(self.generator.synthesize(
            [s[:8] for s in styles], [n[:8] for n in noises]), np.float32))
        check_labels(y_np, num, "y", num_classes)
        if t_np is not None:
            check_labels(t_np, num, "target", num_classes)
        self.output_kind_ = kind
        run = self._graph_for(model, t_np is not None, flat.shape[1])
        steps = tf.constant(self.step_vector())
        out_flat, images = np.empty_like(flat), []
        iterations = np.empty(num, np.int32)
        success = np.empty(num, bool)
        directions = np.empty(num, np.int64)
        starts = range(0, num, self.batch_size)
        bar = keras.utils.Progbar(num) if self.verbose and len(starts) > 1 else None
        for start in starts:
            sl = slice(start, start + self.batch_size)
            args = [tf.constant(flat[sl]), tf.constant(y_np[sl]), steps]
            if t_np is not None:
                args.append(tf.constant(t_np[sl]))
            adv, img, ok, its, direction = run(*args)
            out_flat[sl], success[sl], iterations[sl] = adv.numpy(), ok.numpy(), its.numpy()
            if direction is not None:
                directions[sl] = direction.numpy()
            images.append(img.numpy())
            if bar is not None:
                bar.add(len(flat[sl]))
        adv_styles, adv_noises = self.generator.unflatten(tf.constant(out_flat))
        has_direction = t_np is not None or self.target == "least_likely"
        return GenerativeExamples(
            styles=[np.asarray(s) for s in adv_styles], noises=[np.asarray(n) for n in adv_noises],
            images=np.concatenate(images), iterations=iterations, success=success,
            target=directions if has_direction else None)

    def _graph_for(self, model, targeted, size):
        # Settings read while tracing are part of the key: changing one after a call retraces.
        key = (id(model), targeted, self.max_iterations, self.target, self.loss)
        cached = self._compiled.get(key)
        if cached is not None and cached[0]() is model:
            return cached[1]
        logits_fn = self._logits_function(model)
        least_likely = not targeted and self.target == "least_likely"

        def run(flat, labels, steps, target=None):
            adv, success, iterations, direction = generative_loop(
                logits_fn, flat, labels, target, step_vector=steps,
                max_iterations=self.max_iterations, least_likely=least_likely, loss=self.loss)
            images = synthesize_flat(self.generator, adv)
            if direction is None:
                direction = ops.zeros_like(labels)
            return adv, images, success, iterations, direction

        signature = [tf.TensorSpec((None, size), tf.float32), tf.TensorSpec((None,), tf.int64),
                     tf.TensorSpec((size,), tf.float32)]
        if targeted:
            signature.append(tf.TensorSpec((None,), tf.int64))
        compiled = tf.function(run, jit_compile=resolve_jit_compile(self.jit_compile),
                               input_signature=signature)
        self._compiled[key] = (weak_reference(model), compiled)
        return compiled

    def get_config(self):
        config = super().get_config()
        for name in ("bounds", "seed", "num_restarts"):
            config.pop(name, None)
        config["generator"] = keras.saving.serialize_keras_object(self.generator)
        config["perturb"] = list(self.perturb)
        config["layers"] = list(self.layers)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        config["generator"] = getattr(self.generator, "name", type(self.generator).__name__)
        return "GenerativeAttack(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"


def synthesize_flat(generator, flat):
    """`g(unflatten(flat))` as float32 images (any generator with `synthesize`/`unflatten`)."""
    return ops.cast(generator.synthesize(*generator.unflatten(flat)), "float32")


def generated_logits(generator, classify):
    """`flat latents -> classify(g(latents))`: the function GAT's attack differentiates."""
    return lambda flat: classify(synthesize_flat(generator, flat))


def check_perturb(perturb):
    """`"style"`, `"noise"` or a sequence of them -> a sorted tuple without repeats."""
    values = (perturb,) if isinstance(perturb, str) else perturb
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if not values or any(v not in PERTURB for v in values):
        raise ValueError("Argument `perturb` must be 'style', 'noise' or both (a sequence). "
                         f"Received: perturb={perturb!r}")
    return tuple(p for p in PERTURB if p in values)


def check_layers(layers, num_layers):
    """None (all layers), an index or a sequence of indices in `[0, num_layers)` -> a tuple."""
    if layers is None:
        return tuple(range(num_layers))
    values = (layers,) if isinstance(layers, (int, np.integer)) else layers
    try:
        values = tuple(values)
        ok = len(values) > 0 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and 0 <= v < num_layers for v in values)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"Argument `layers` must be None or synthesis layer indices in [0, {num_layers}) "
            f"(0 = coarsest). Received: layers={layers!r}")
    return tuple(sorted({int(v) for v in values}))
