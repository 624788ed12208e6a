"""On-manifold attacks: PGD on a generator's latent codes (OM-FGSM / OM-PGD).

The image is `G(w)`; the attack perturbs the latent `w` inside an eta-ball and never touches
pixels, so every adversarial example lies on the generator's manifold. It is the very PGD loop
of image space (`pgd_loop`) run on `w -> classifier(G(w))`: no second implementation.

Reference:
    Lin, Lau, Levine, Chellappa, Feizi, "Dual Manifold Adversarial Robustness: Defense against
    Lp and non-Lp Adversarial Attacks", NeurIPS 2020, eq. (5) and (9).
"""


import keras
import numpy as np
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.gradients import inference, logits_function
from manidefense.attacks.pgd import PGD
from manidefense.validation import check_bounds, check_non_negative


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

    def __init__(self, decoder, eta=0.02, norm="linf", step_size=None, num_steps=5,
                 random_start=True, latent_bounds=None, l1_sparsity=0.99, **kwargs):
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
    def eta(self):
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

    def generate(self, model, w, y, target=None):
        """Runs the attack and decodes: returns `(w_adv, G(w_adv))` as numpy arrays."""
        w_adv = np.asarray(self(model, w, y, target))
        return w_adv, self.decode(w_adv)

    def decode(self, w):
        """`G(w)` in batches of `batch_size`, as a float32 numpy array."""
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
