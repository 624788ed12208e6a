"""Dual-manifold adversarial training (DMAT) in one `train_step`, so `fit` does the rest.

Per batch `((x, w), y)`, with `x = G(w)` for on-manifold data:
- the image attack (PGD-5 at 4/255 by default) gives `x_img` near `x` (off-manifold);
- the latent attack (OM-PGD-5 at eta 0.02 by default) gives `x_lat = G(w_adv)` (on-manifold);
both in inference mode, with the gradients stopped; then the classifier is trained on

    ce:     clean_weight·CE(f(x)) + image_weight·CE(f(x_img)) + latent_weight·CE(f(x_lat))
    trades: clean_weight·CE(f(x)) + β·(image_weight·KL(f(x) ‖ f(x_img))
                                       + latent_weight·KL(f(x) ‖ f(x_lat)))

which is AT (eq. 8, `latent_attack=None`), OM-AT (eq. 9, `image_attack=None`), DMAT (eq. 10),
TRADES and DMAT+TRADES (eq. 11; the attacks then maximise the KL term, as TRADES does). The
authors' DMAT: 0.5/0.5 with no clean term.

Reference:
    Lin, Lau, Levine, Chellappa, Feizi, "Dual Manifold Adversarial Robustness", NeurIPS 2020;
    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy" (TRADES),
    ICML 2019.
"""

import keras
import tensorflow as tf
from keras import ops

from manidefense._wrapping import build_from_base
from manidefense.attacks import PGD, LatentPGD
from manidefense.attacks.base import Attack
from manidefense.attacks.pgd import pgd_loop
from manidefense.training.base import ClassifierTrainer
from manidefense.training.base import correct as _correct
from manidefense.training.base import cross_entropy as _ce
from manidefense.validation import check_choice, check_non_negative

_DEFAULT = "default"


@keras.saving.register_keras_serializable(package="manidefense")
class DualManifoldTrainer(ClassifierTrainer):
    """Trains a classifier with image-space and latent-space adversarial examples (DMAT).

    Args:
        classifier: the Keras classifier to train (logits, or probabilities with `output`).
        generator: the decoder G mapping latents to images; default: the latent attack's.
        image_attack: a gradient attack in image space run on every batch (any `Attack` whose
            `_attack_batch` is graph-safe: PGD, FGSM, MIFGSM, ...; PGD-like for TRADES), or None.
            Default: the authors' `PGD(eps=4/255, step_size=1/255, num_steps=5)`.
        latent_attack: a `LatentPGD` on `generator`, or None. Default (when a generator is
            given): the authors' `LatentPGD(generator, eta=0.02, step_size=0.005, num_steps=5)`.
        objective: `"ce"` or `"trades"`.
        clean_weight: weight of the clean loss; None picks the paper's: for `"ce"` no clean
            term (1.0 with no attack), for `"trades"` 1.0 (eq. 11).
        image_weight: weight of the image-adversarial loss; None: 0.5 with both attacks
            (1.0 with one) for `"ce"`, 1.0 for `"trades"`.
        latent_weight: weight of the latent-adversarial loss, chosen like `image_weight`.
        trades_beta: TRADES' β (6.0 in TRADES and DMAT).
        output: `"auto"`, `"logits"` or `"probabilities"`: what the classifier returns.
        seed: int seed of the attacks' random starts (a `SeedGenerator` the trainer owns, so
            checkpoints carry its state). None draws one.

    Data: `fit` takes batches of `((x, w), y)` (e.g. `OnManifoldData.to_dataset()`), or of
    `(x, y)` when there is no latent attack. `compile(optimizer=...)` takes the optimizer; the
    loss is the trainer's own. The history shows `loss`, the per-term losses (`clean_loss`,
    `image_loss`, `latent_loss`) and the accuracies on the clean, image-adversarial and
    latent-adversarial inputs of each batch (computed from the same forward passes the
    gradient step uses). `evaluate` reports clean `loss` and `accuracy`.

    Example:
    >>> trainer = manidefense.training.DualManifoldTrainer(
    ...     classifier, latent_attack=manidefense.attacks.LatentPGD(vae.decoder, eta=0.5))
    >>> trainer.compile(optimizer="adam")
    >>> trainer.fit(om_data.to_dataset(batch_size=128, shuffle=True), epochs=5)
    >>> classifier.save("dmat.keras")
    """

    def __init__(self, classifier: keras.Model, generator: keras.Model | None = None,
                 image_attack: Attack | None = _DEFAULT,
                 latent_attack: LatentPGD | None = _DEFAULT, objective: str = "ce",
                 clean_weight: float | None = None, image_weight: float | None = None,
                 latent_weight: float | None = None, trades_beta: float = 6.0,
                 output: str = "auto", seed: int | None = None, **kwargs):
        super().__init__(classifier, output=output, seed=seed, **kwargs)
        self.objective = check_choice("objective", objective, ("ce", "trades"))
        self.trades_beta = check_non_negative("trades_beta", trades_beta)
        if image_attack == _DEFAULT:
            image_attack = PGD(eps=4 / 255, step_size=1 / 255, num_steps=5)
        if latent_attack == _DEFAULT:
            latent_attack = (None if generator is None else
                             LatentPGD(generator, eta=0.02, step_size=0.005, num_steps=5))
        self.image_attack = _check_attack("image_attack", image_attack, Attack, self.objective)
        self.latent_attack = _check_attack("latent_attack", latent_attack, LatentPGD,
                                           self.objective)
        if self.latent_attack is not None:
            if generator is not None and generator is not self.latent_attack.decoder:
                raise ValueError(
                    "Arguments `generator` and `latent_attack` disagree: the latent attack must "
                    "decode with the trainer's generator. Received: generator="
                    f"{getattr(generator, 'name', generator)!r}, latent_attack.decoder="
                    f"{getattr(self.latent_attack.decoder, 'name', self.latent_attack.decoder)!r}"
                )
            generator = self.latent_attack.decoder
        self.generator = generator
        self.clean_weight, self.image_weight, self.latent_weight = self._weights(
            clean_weight, image_weight, latent_weight)
        for attack in (self.image_attack, self.latent_attack):
            if attack is not None:
                attack._seed_generator = self.seed_generator
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self._metric_names()}
        build_from_base(self, classifier)  # last: building locks the tracked state

    # === Configuration ===

    def _weights(self, clean, image, latent):
        has_image, has_latent = self.image_attack is not None, self.latent_attack is not None
        if self.objective == "trades":
            defaults = (1.0, 1.0, 1.0)
        else:
            share = 0.5 if has_image and has_latent else 1.0
            defaults = (0.0 if has_image or has_latent else 1.0, share, share)
        values = []
        for name, value, default in zip(("clean_weight", "image_weight", "latent_weight"),
                                        (clean, image, latent), defaults, strict=True):
            values.append(default if value is None else check_non_negative(name, value))
        clean, image, latent = values
        image, latent = (image if has_image else 0.0), (latent if has_latent else 0.0)
        if clean + image + latent == 0:
            raise ValueError(
                "The loss weights leave nothing to train on: at least one of `clean_weight`, "
                "`image_weight` (with an image attack) and `latent_weight` (with a latent "
                f"attack) must be positive. Received: clean_weight={clean}, image_weight="
                f"{image}, latent_weight={latent}"
            )
        return clean, image, latent

    def _metric_names(self):
        names = ["loss", "clean_loss", "accuracy"]
        if self.image_attack is not None:
            names += ["image_loss", "image_accuracy"]
        if self.latent_attack is not None:
            names += ["latent_loss", "latent_accuracy"]
        return names

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        generator_is_decoder = (self.latent_attack is not None
                                and self.generator is self.latent_attack.decoder)
        config.update(
            classifier=serialize(self.classifier),
            generator=None if generator_is_decoder else serialize(self.generator),
            image_attack=serialize(self.image_attack),
            latent_attack=serialize(self.latent_attack),
            objective=self.objective, clean_weight=self.clean_weight,
            image_weight=self.image_weight, latent_weight=self.latent_weight,
            trades_beta=self.trades_beta, output=self.classifier_output, seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "generator", "image_attack", "latent_attack"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # === Model ===

    def _unpack(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError("DualManifoldTrainer takes batches of ((x, w), y). Received "
                                 f"inputs with {len(x)} parts")
            x, w = x
        else:
            w = None
        if w is None and self.latent_attack is not None:
            raise ValueError(
                "DualManifoldTrainer with a latent attack needs batches of ((x, w), y): the "
                "images and their latents (e.g. `OnManifoldData.to_dataset()`). Received: "
                "batches of (x, y) without latents"
            )
        return ops.cast(x, "float32"), w, ops.cast(y, "int64")

    # === Adversarial examples (inference mode, no gradient to the classifier) ===

    def _adversarial(self, x, w, y, clean_logits):
        x_img = x_lat = None
        classify = lambda z: self._logits(z, training=False)  # noqa: E731
        if self.image_attack is not None:
            x_img = self._run_attack(self.image_attack, classify, x, y, clean_logits)
        if self.latent_attack is not None:
            decoded = self.latent_attack._logits_function(self.classifier)
            w = ops.cast(w, "float32")
            w_adv = self._run_attack(self.latent_attack, decoded, w, y, clean_logits)
            x_lat = ops.cast(self.generator(w_adv, training=False), "float32")
        return (None if x_img is None else tf.stop_gradient(x_img),
                None if x_lat is None else tf.stop_gradient(x_lat))

    def _run_attack(self, attack, logits_fn, x, y, clean_logits):
        if self.objective == "trades":
            # TRADES' inner maximisation: the KL divergence to the clean prediction.
            clean = ops.stop_gradient(ops.softmax(clean_logits))
            adv = pgd_loop(
                logits_fn, x, y, eps=attack.eps, norm=attack.norm,
                step_size=attack.step_size or attack._default_step_size(),
                num_steps=attack.num_steps, random_start=True,
                loss=lambda logits, labels, target: _kl(clean, logits),
                bounds=attack.bounds, keep_best=False, seed=self.seed_generator,
            )[0]
        else:
            adv = attack._attack_batch(logits_fn, x, y, None)
        return attack._constrain(x, adv)

    # === Steps ===

    def train_step(self, data):
        x, w, y = self._unpack(data)
        needs_clean = self.clean_weight > 0 or self.objective == "trades"
        # Inference-mode clean logits: TRADES' attack reference, and the clean accuracy when
        # the clean term is not trained on (no BatchNorm statistics from an unused batch).
        clean_probe = (self._logits(x, training=False)
                       if self.objective == "trades" or not needs_clean else None)
        x_img, x_lat = self._adversarial(x, w, y, clean_probe)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            clean_logits = self._logits(x, training=True) if needs_clean else clean_probe
            terms = {"clean": _ce(clean_logits, y)}
            logits = {"": clean_logits}
            for name, inputs in (("image", x_img), ("latent", x_lat)):
                if inputs is not None:
                    logits[name] = self._logits(inputs, training=True)
                    terms[name] = (_kl(ops.softmax(clean_logits), logits[name])
                                   if self.objective == "trades" else _ce(logits[name], y))
            loss = self._total(terms)
            scaled = self._scaled(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self._trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self._trackers[f"{name}_loss"].update_state(ops.mean(value))
        for name, value in logits.items():
            self._trackers[f"{name}_accuracy" if name else "accuracy"].update_state(
                _correct(value, y))
        return {m.name: m.result() for m in self.metrics}

    def _total(self, terms):
        beta = self.trades_beta if self.objective == "trades" else 1.0
        loss = self.clean_weight * ops.mean(terms["clean"])
        if "image" in terms:
            loss = loss + beta * self.image_weight * ops.mean(terms["image"])
        if "latent" in terms:
            loss = loss + beta * self.latent_weight * ops.mean(terms["latent"])
        return loss


def _kl(clean_probs, logits):
    """Per-example KL(clean ‖ softmax(logits)), TRADES' robustness term."""
    log_q = ops.log_softmax(logits, axis=-1)
    log_p = ops.log(ops.maximum(clean_probs, 1e-12))
    return ops.sum(clean_probs * (log_p - log_q), axis=-1)


def _check_attack(name, attack, kind, objective):
    if attack is None:
        return None
    if not isinstance(attack, kind):
        raise ValueError(f"Argument `{name}` must be a manidefense {kind.__name__} or None. "
                         f"Received: {attack!r}")
    if objective == "trades" and not isinstance(attack, PGD):
        raise ValueError(
            f"Argument `{name}` must be PGD-like (eps, norm, step_size, num_steps) for "
            f"objective='trades', whose attack maximises the KL term. Received: {attack!r}"
        )
    return attack
