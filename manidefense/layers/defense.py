"""The RBF-CNN defended model: input → RBF → reconstruction → classifier, averaged over draws."""

import keras
from keras import ops

from manidefense.layers.rbf import RBFLayer
from manidefense.layers.reconstruction import TEST_BETA1, ReconstructionLayer
from manidefense.validation import check_positive_int


@keras.saving.register_keras_serializable(package="manidefense")
class RepeatSamples(keras.layers.Layer):
    """Repeats every example `num_samples` times along the batch (copies are consecutive).

    Args:
        num_samples: copies per example.

    Example:
    >>> RepeatSamples(3)(np.array([[1.0], [2.0]])).numpy().ravel()
    array([1., 1., 1., 2., 2., 2.], dtype=float32)
    """

    def __init__(self, num_samples: int, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = check_positive_int("num_samples", num_samples)

    def call(self, inputs):
        return ops.repeat(inputs, self.num_samples, axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_samples": self.num_samples}


@keras.saving.register_keras_serializable(package="manidefense")
class SampleAverage(keras.layers.Layer):
    """Averages the class probabilities of `num_samples` consecutive copies (eq. 5).

    Args:
        num_samples: copies per example, as made by `RepeatSamples`.
        from_logits: the inputs are logits (a softmax is applied first) or probabilities.

    Example:
    >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0]])
    >>> SampleAverage(2, from_logits=False)(probs).numpy()
    array([[0.7 , 0.3 ],
           [0.1 , 0.9 ]], dtype=float32)
    """

    def __init__(self, num_samples: int, from_logits: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.from_logits = bool(from_logits)

    @property
    def draws_per_call(self) -> int:
        """Read by `attacks.adaptive_model`: each output already averages this many draws."""
        return self.num_samples

    def call(self, inputs):
        probs = ops.softmax(inputs, axis=-1) if self.from_logits else inputs
        probs = ops.reshape(probs, (-1, self.num_samples, probs.shape[-1]))
        return ops.mean(probs, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_samples": self.num_samples,
                "from_logits": self.from_logits}


def outputs_logits(classifier):
    """False when the classifier's last layer is a softmax (probabilities), else True."""
    last = classifier.layers[-1] if getattr(classifier, "layers", None) else classifier
    if isinstance(last, keras.layers.Softmax):
        return False
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") != "softmax"


def rbf_defense(classifier: keras.Model, rbf: RBFLayer, beta1: float = TEST_BETA1,
                beta2: float = 1.75, num_samples: int = 10, clip: bool = True,
                from_logits: bool | None = None, seed: int | None = None,
                name: str = "rbf_defense") -> keras.Model:
    """RBF-CNN: a classifier behind an RBF layer and a reconstruction layer (Fig. 1, eq. 5).

    The model repeats each input `num_samples` times, reconstructs every copy with its own
    noise draw, classifies it, and returns the mean of the class probabilities — one batched
    call. With `beta2 = 0` the reconstruction is deterministic and a single copy is used.
    The authors averaged 10 fixed draws; here draws are fresh on every call, so an attacker
    cannot overfit to them.

    Args:
        classifier: a built Keras classifier (logits or probabilities), trained on
            reconstructed images (rCNN) for good clean accuracy.
        rbf: a fitted `RBFLayer` for the classifier's input shape.
        beta1: `ReconstructionLayer`'s softmax sharpness (test-time β1 = 25 ln 2).
        beta2: `ReconstructionLayer`'s template noise (the authors' MNIST β2 = 1.75).
        clip: clip the reconstruction to the RBF layer's bounds.
        num_samples: noise draws averaged per prediction (the authors' m = 10).
        from_logits: whether `classifier` returns logits; None detects it from its last layer.
        seed: seed of the reconstruction noise.
        name: model name.

    Returns:
        A functional `keras.Model` returning class probabilities. It saves and loads as
        `.keras` (its custom layers are registered), and its reconstruction layer declares
        `randomized`/`non_differentiable` so `evaluate_robustness` attacks it with BPDA+EoT.

    Example:
    >>> defended = manidefense.layers.rbf_defense(cnn, rbf, beta2=1.75)
    >>> defended.predict(x_test).argmax(-1)
    """
    num_samples = check_positive_int("num_samples", num_samples)
    try:
        shape = tuple(classifier.input_shape[1:])
    except (AttributeError, ValueError):
        raise ValueError("Argument `classifier` must be a built Keras model with a known input "
                         f"shape. Received: {classifier!r}") from None
    if from_logits is None:
        from_logits = outputs_logits(classifier)
    samples = num_samples if beta2 > 0 else 1
    inputs = keras.Input(shape)
    x = RepeatSamples(samples)(inputs) if samples > 1 else inputs
    x = ReconstructionLayer(rbf, beta1=beta1, beta2=beta2, clip=clip, seed=seed,
                            name="reconstruction")(x)
    outputs = SampleAverage(samples, from_logits=from_logits)(classifier(x))
    return keras.Model(inputs, outputs, name=name)
