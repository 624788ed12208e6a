"""Adaptive wrappers: BPDA and EoT turn every gradient attack into an adaptive one.

They wrap the *model*, not the attack, so `PGD(...)(EoT(BPDA(defense)), x, y)` is BPDA+EoT
with any attack of the library and no special attack class.

Layers and models describe themselves with three optional attributes, read here:

- `randomized = True`: the forward pass draws fresh randomness at inference (needs EoT);
- `non_differentiable = True`: gradients through it are zero, undefined or useless (needs BPDA);
- `surrogate`: a differentiable stand-in for the backward pass (a layer or model with the same
  output shape); None means the identity (for layers whose output has the input's shape).

Reference:
    Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing
    Defenses to Adversarial Examples", ICML 2018.
"""

import keras
from keras import ops

from manidefense.attacks.gradients import as_logits
from manidefense.validation import check_positive_int


def sublayers(obj):
    """`obj` and every layer nested in it (models, wrappers, layers), each once."""
    seen, stack, out = set(), [obj], []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        out.append(item)
        if isinstance(item, keras.layers.Layer):
            stack.extend(item._flatten_layers(include_self=False, recursive=False))
        for name in ("layer", "model", "surrogate"):
            inner = getattr(item, name, None)
            if isinstance(inner, keras.layers.Layer):
                stack.append(inner)
    return out


def is_randomized(model):
    """True when `model` or any layer in it declares `randomized = True`."""
    return any(getattr(layer, "randomized", False) for layer in sublayers(model))


def draws_per_call(model):
    """How many random draws one call of `model` already averages: the largest
    `draws_per_call` a layer in it declares (e.g. `layers.SampleAverage`, the mean over
    `rbf_defense`'s noise draws), 1 when none does."""
    return max([1] + [int(getattr(layer, "draws_per_call", 1) or 1)
                      for layer in sublayers(model)])


def is_non_differentiable(model):
    """True when `model` or a layer in it declares `non_differentiable = True` (and is not
    already wrapped in `BPDA`)."""
    wrapped = {id(inner) for b in sublayers(model) if isinstance(b, BPDA)
               for inner in sublayers(b.layer)}
    return any(getattr(layer, "non_differentiable", False) and id(layer) not in wrapped
               for layer in sublayers(model))


def _call(layer, inputs, training):
    # Keras layers drop `training` themselves when their call() does not take it; plain
    # callables get only the inputs. (Catching TypeError here would hide real errors.)
    if isinstance(layer, keras.layers.Layer):
        return layer(inputs, training=training)
    return layer(inputs)


@keras.saving.register_keras_serializable(package="manidefense")
class BPDA(keras.layers.Layer):
    """Backward pass differentiable approximation: the real forward, a surrogate's gradient.

    The output equals `layer(x)` exactly, while gradients flow as if the output were
    `surrogate(x)`: `surrogate(x) + stop_gradient(layer(x) - surrogate(x))`. The surrogate is,
    in order: the `surrogate` argument, the layer's declared `surrogate` attribute, or the
    identity (then `layer` must preserve its input's shape, e.g. a quantisation or a
    denoising layer).

    Args:
        layer: the layer or model whose gradient is broken.
        surrogate: optional differentiable layer or model with the same output shape.

    Example:
    >>> attack = manidefense.attacks.PGD(eps=0.1)
    >>> x_adv = attack(keras.Sequential([BPDA(quantize), classifier]), x, y)
    """

    def __init__(self, layer: keras.layers.Layer, surrogate: keras.layers.Layer | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.surrogate = surrogate
        self.randomized = is_randomized(layer)

    def _approximation(self, inputs, training):
        surrogate = self.surrogate or getattr(self.layer, "surrogate", None)
        if surrogate is None:
            return inputs
        return _call(surrogate, inputs, training)

    def call(self, inputs, training=False):
        real = _call(self.layer, inputs, training)
        approx = self._approximation(inputs, training)
        if tuple(real.shape[1:]) != tuple(approx.shape[1:]):
            raise ValueError(
                "BPDA's surrogate must produce the layer's output shape (the identity only fits "
                "shape-preserving layers): pass `surrogate=`. Received: layer output shape "
                f"{tuple(real.shape)}, surrogate output shape {tuple(approx.shape)}"
            )
        approx = ops.cast(approx, real.dtype)
        return approx + ops.stop_gradient(real - approx)

    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        config["surrogate"] = (None if self.surrogate is None
                               else keras.saving.serialize_keras_object(self.surrogate))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        if config.get("surrogate") is not None:
            config["surrogate"] = keras.saving.deserialize_keras_object(config["surrogate"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="manidefense")
class EoT(keras.layers.Layer):
    """Expectation over transformation: averages a randomized model's logits over draws.

    Each input is repeated `num_samples` times in one batched call, so every copy gets its own
    randomness; the outputs are turned into logits (probabilities become log-probabilities) and
    averaged. Attacking the average follows the gradient of the expected logits, which is what
    breaks defenses that rely on noise to mislead single-sample gradients.

    Args:
        model: the randomized classifier (a layer or model).
        num_samples: random draws per input and per forward pass (≥ 20 for an evaluation, as
            the evaluation checklist asks).

    Example:
    >>> x_adv = manidefense.attacks.PGD(eps=0.1)(EoT(noisy_model, num_samples=20), x, y)
    """

    def __init__(self, model: keras.layers.Layer, num_samples: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.num_samples = check_positive_int("num_samples", num_samples)

    def call(self, inputs, training=False):
        n = self.num_samples
        tiled = ops.repeat(inputs, n, axis=0)
        logits = as_logits(_call(self.model, tiled, training))
        logits = ops.reshape(logits, (-1, n, logits.shape[-1]))
        return ops.mean(logits, axis=1)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.model)
        config["num_samples"] = self.num_samples
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def _is_graph_model(model):
    # Sequential and functional models can be rebuilt layer by layer with clone_model;
    # subclassed models cannot (their call() is opaque Python).
    return isinstance(model, keras.Model) and (
        isinstance(model, keras.Sequential) or hasattr(model, "_operations")
        and type(model).__name__ in ("Functional", "Sequential")
    )


def _wrap_if_declared(layer):
    if getattr(layer, "non_differentiable", False) and not isinstance(layer, BPDA):
        return BPDA(layer)
    return layer


def adaptive_model(model: keras.Model, eot_samples: int = 20,
                   randomized: bool | None = None) -> tuple[keras.Model, list[str]]:
    """The model an adaptive attacker should differentiate: BPDA and EoT applied as declared.

    - A model that itself declares `non_differentiable` is wrapped whole in `BPDA` (with its
      declared `surrogate`; a model whose output shape differs from its input needs one).
    - A Sequential or functional model is rebuilt with `keras.models.clone_model`, every layer
      declaring `non_differentiable` wrapped in `BPDA` (the layers are shared, not copied, so
      weights stay tied).
    - A randomized model (declared, or `randomized=True` from an empirical check) is wrapped
      in `EoT`, so that each gradient averages at least `eot_samples` random draws: a model
      that already averages `draws_per_call(model)` draws per call is called
      `ceil(eot_samples / draws_per_call)` times.
    The forward pass is unchanged by BPDA; EoT's forward is the mean logit over draws.

    Args:
        model: the defended classifier.
        eot_samples: random draws averaged per gradient; 1 turns EoT off.
        randomized: force (True/False) or detect from declarations (None).

    Returns:
        `(attack_model, notes)`: the wrapped model and a list of sentences saying what was
        applied or why something could not be, for the evaluation report.

    Example:
    >>> noisy = keras.Sequential([keras.layers.GaussianNoise(0.1), model])
    >>> attack_model, notes = adaptive_model(noisy, eot_samples=20, randomized=True)
    >>> type(attack_model).__name__, notes
    ('EoT', ['EoT over 20 random draws per gradient (the model is randomized).'])
    >>> x_adv = manidefense.attacks.PGD(eps=0.1, num_steps=10)(attack_model, x, y)
    """
    eot_samples = check_positive_int("eot_samples", eot_samples)
    notes, wrapped = [], model
    if is_non_differentiable(model):
        if getattr(model, "non_differentiable", False):
            surrogate = getattr(model, "surrogate", None)
            if surrogate is None and not _preserves_shape(model):
                notes.append(
                    f"{model.name} declares non_differentiable without a `surrogate` and changes "
                    "the input's shape, so BPDA has no backward pass: gradient attacks see no "
                    "gradient; rely on the gradient-free attacks."
                )
            else:
                wrapped = BPDA(model)
                notes.append(f"BPDA around the whole model {model.name} "
                             f"(backward: {_describe(surrogate)}).")
        elif _is_graph_model(model):
            names = [layer.name for layer in sublayers(model)
                     if getattr(layer, "non_differentiable", False) and layer is not model]
            wrapped = keras.models.clone_model(model, clone_function=_wrap_if_declared,
                                               recursive=True)
            notes.append(f"BPDA around the non-differentiable layers {names} "
                         "(backward: their surrogates, identity by default).")
        else:
            notes.append(
                f"{model.name} contains non-differentiable layers but is a subclassed model, "
                "which cannot be rebuilt around them: wrap them in BPDA yourself or declare "
                "`non_differentiable` and a `surrogate` on the model; gradient attacks may "
                "see useless gradients."
            )
    if randomized is None:
        randomized = is_randomized(model)
    per_call = draws_per_call(model)
    calls = -(-eot_samples // per_call)
    if randomized and calls > 1:
        wrapped = EoT(wrapped, num_samples=calls)
        notes.append(f"EoT over {calls * per_call} random draws per gradient (the model is "
                     "randomized)" + (f": {calls} calls of a model that averages {per_call} "
                                      "draws per call." if per_call > 1 else "."))
    elif randomized and eot_samples > 1:
        notes.append(f"No EoT wrapper: the randomized model already averages {per_call} draws "
                     f"per call (≥ eot_samples={eot_samples}).")
    elif randomized:
        notes.append("The model is randomized but EoT is off (eot_samples=1).")
    return wrapped, notes


def _preserves_shape(model):
    try:
        return tuple(model.input_shape) == tuple(model.output_shape)
    except (AttributeError, ValueError):
        return False


def _describe(surrogate):
    if surrogate is None:
        return "identity"
    return (getattr(surrogate, "name", None) or getattr(surrogate, "__name__", None)
            or type(surrogate).__name__)
