"""The TensorFlow-specific corner of the attacks: logits of any Keras model and their gradient.

Attacks must differentiate logits (or log-probabilities), never raw softmax outputs, whose
gradients vanish once a prediction saturates. `logits_function(model)` returns a callable
`x -> logits`:

1. when the model is a Functional/Sequential model whose last layer applies a softmax
   (a `Softmax`/`Activation("softmax")` layer, or a `Dense(..., activation="softmax")`),
   the softmax is stripped and the exact pre-softmax logits are returned;
2. otherwise, when `output="auto"`, each batch of outputs is inspected inside the graph:
   non-negative rows that sum to one are taken as probabilities and replaced by their
   logarithm (log-probabilities are logits up to a per-example constant, so cross-entropy,
   margin and DLR are unchanged).

The model is always called with `training=False` (dropout and batch statistics frozen).
"""

import weakref

import keras
import tensorflow as tf
from keras import ops

from manidefense.validation import check_choice

OUTPUTS = ("auto", "logits", "probabilities")
_LOG_FLOOR = 1e-30
_stripped_cache = weakref.WeakKeyDictionary()


def _is_softmax(fn):
    return fn is keras.activations.softmax or getattr(fn, "__name__", "") == "softmax"


def _strip_softmax(model):
    """A callable giving the pre-softmax logits of `model`, or None when not recognisable."""
    if model in _stripped_cache:
        return _stripped_cache[model]
    stripped = None
    try:
        last = model.layers[-1]
        single_input = len(model.inputs) == 1 and len(model.outputs) == 1
        if single_input and model.outputs[0] is last.output:
            if isinstance(last, keras.layers.Softmax) or (
                isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)
            ):
                stripped = keras.Model(model.inputs[0], last.input)
            elif type(last) is keras.layers.Dense and _is_softmax(last.activation):
                body = keras.Model(model.inputs[0], last.input)

                def stripped(x, body=body, dense=last):
                    h = ops.matmul(body(x, training=False), dense.kernel)
                    return h + dense.bias if dense.use_bias else h
    except (AttributeError, ValueError, TypeError, IndexError):
        # Subclassed models have no symbolic graph to cut: fall back to the runtime check.
        stripped = None
    if isinstance(stripped, keras.Model):
        inner = stripped

        def stripped(x, inner=inner):
            return inner(x, training=False)
    _stripped_cache[model] = stripped
    return stripped


def inference(model, inputs):
    """Calls a model in inference mode: Keras layers with `training=False`, plain callables as
    they are (decoders, encoders and classifiers the attacks and projections run)."""
    if isinstance(model, keras.layers.Layer):
        return model(inputs, training=False)
    return model(inputs)


def weak_reference(obj):
    """A weak reference to `obj` for caches keyed by model, or a strong one when `obj` cannot
    be weakly referenced (some plain callables)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def as_logits(outputs, output="auto"):
    """Maps model outputs to logits: probabilities become log-probabilities."""
    outputs = ops.cast(outputs, "float32")
    log_probs = ops.log(ops.maximum(outputs, _LOG_FLOOR))
    if output == "logits":
        return outputs
    if output == "probabilities":
        return log_probs
    rows = ops.sum(outputs, axis=-1)
    looks_like_probs = ops.logical_and(
        ops.all(outputs >= 0.0), ops.all(ops.abs(rows - 1.0) < 1e-3)
    )
    return ops.where(looks_like_probs, log_probs, outputs)


def logits_function(model, output="auto"):
    """Returns a callable `x -> float32 logits` for a classifier.

    Args:
        model: a callable Keras model returning `(batch, num_classes)` logits or probabilities.
        output: `"auto"` (detect), `"logits"` or `"probabilities"`.
    """
    check_choice("output", output, OUTPUTS)
    if output != "logits" and isinstance(model, keras.Model):
        stripped = _strip_softmax(model)
        if stripped is not None:
            return lambda x: ops.cast(stripped(x), "float32")
    return lambda x: as_logits(model(x, training=False), output)


def output_kind(model, outputs, output="auto"):
    """Describes how `logits_function` treats a model: for reports and sanity checks.

    Returns one of `"logits"`, `"stripped_softmax"`, `"probabilities"`.
    """
    if output == "logits":
        return "logits"
    if isinstance(model, keras.Model) and _strip_softmax(model) is not None:
        return "stripped_softmax"
    if output == "probabilities":
        return "probabilities"
    outputs = ops.convert_to_numpy(outputs)
    rows_sum_to_one = abs(outputs.sum(axis=-1) - 1.0).max() < 1e-3
    return "probabilities" if outputs.min() >= 0 and rows_sum_to_one else "logits"


def value_and_grad(fn, x):
    """Evaluates `values, aux = fn(x)` and the gradient of `sum(values)` with respect to `x`.

    Per-example values are independent in inference mode, so the gradient of their sum is the
    batch of per-example gradients. A missing gradient path gives zeros.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        values, aux = fn(x)
        total = ops.sum(values)
    grad = tape.gradient(total, x)
    if grad is None:
        # No differentiable path (e.g. a rounding layer): a zero gradient, which the
        # evaluation's gradient check reports, rather than a crash deep inside a graph.
        grad = ops.zeros_like(x)
    return values, aux, grad
