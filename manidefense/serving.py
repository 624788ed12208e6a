"""Export of defended models to a TensorFlow SavedModel for serving.

`export(model, path)` writes what Keras 3's `model.export(path)` writes — a SavedModel whose
`serve` endpoint (also the `serving_default` signature) is the model's inference output — and
adds what a randomized defense needs in production: a `serve_seeded(inputs, seed)` endpoint that
makes one request reproducible, and the defense's own extra endpoints (the smoothed
classifier's PREDICT with abstention). The SavedModel reloads with `tf.saved_model.load` in a
process that never imports manidefense or Keras, and TF Serving serves its signatures.

Randomness in an exported model. A noise draw in Keras is a stateless random op seeded by a
`SeedGenerator`'s state variable, which the SavedModel stores and every call advances. So a
freshly loaded model reproduces the sequence of draws the original would have made after export,
request after request; two servers loaded from the same files draw the same noise for the n-th
request. `serve_seeded(inputs, seed)` instead sets every noise stream from `seed` for that one
call and restores the streams afterwards: equal seeds give equal outputs in any process, and
different seeds give independent draws of the defense's output distribution.
"""

import os
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from manidefense.attacks.adaptive import is_randomized

__all__ = ["export", "input_signature_of", "seed_generators", "with_seed"]

SERVE = "serve"


def seed_generators(model: keras.layers.Layer) -> list[keras.random.SeedGenerator]:
    """Every `keras.random.SeedGenerator` a model's call draws from, each once.

    Args:
        model: a Keras layer or model.

    Returns:
        A list of SeedGenerators (empty for a deterministic model).

    Example:
    >>> [g.state.path for g in seed_generators(defended)]
    ['reconstruction/seed_generator/seed_generator_state']
    """
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator.state) not in seen:
                seen.add(id(generator.state))
                found.append(generator)
    return found


def input_signature_of(model: keras.Model,
                       input_signature: list | tf.TensorSpec | None = None) -> list[tf.TensorSpec]:
    """The `tf.TensorSpec` list an exported endpoint takes: `input_signature` if given, else
    the model's (a functional model's inputs, or the shape it was built or first called with).

    Raises:
        ValueError: the model has no known input shape and no `input_signature` was given.

    Example:
    >>> input_signature_of(md.zoo.small_cnn())
    [TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32, name=None)]
    """
    if input_signature is not None:
        specs = list(input_signature) if isinstance(input_signature, (list, tuple)) else [
            input_signature]
    elif isinstance(model, keras.Sequential) or hasattr(model, "_inputs_struct"):
        specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs]
    else:  # a subclassed model: the shape it was built (or first called) with
        shapes = list((getattr(model, "_build_shapes_dict", None) or {}).values())
        if len(shapes) != 1 or not isinstance(shapes[0], (tuple, list)):
            raise ValueError(
                "Argument `model` must know its input shape to be exported: call it once on a "
                "batch, or pass `input_signature=[keras.InputSpec(shape=(None, 28, 28, 1))]`. "
                f"Received: {type(model).__name__} named {model.name!r} with no recorded "
                "input shape"
            )
        specs = [tf.TensorSpec((None, *shapes[0][1:]), tf.float32)]
    out = []
    for spec in specs:
        if isinstance(spec, keras.InputSpec):
            spec = tf.TensorSpec(spec.shape, spec.dtype or "float32")
        if not isinstance(spec, tf.TensorSpec):
            raise ValueError("Argument `input_signature` must be a list of one tf.TensorSpec or "
                             f"keras.InputSpec per model input. Received: {input_signature!r}")
        out.append(spec)
    return out


def export(model: keras.Model, filepath: str | os.PathLike, *,
           input_signature: list | tf.TensorSpec | None = None,
           options: dict | None = None, seeded: bool | None = None,
           verbose: bool = False) -> list[str]:
    """Writes a defended model as a TensorFlow SavedModel for `tf.saved_model.load`/TF Serving.

    Endpoints (each also a signature of the same name; `serving_default` is `serve`):
    - `serve(inputs)`: the model's inference output (`model(inputs, training=False)`).
    - the defense's own endpoints, from its `export_endpoints()` method if it has one (e.g.
      `SmoothedClassifier`'s `predict`, Cohen's PREDICT with abstention).
    - for randomized models, `<name>_seeded(inputs, seed)` for each endpoint above: the same
      output with every noise stream set from the int64 scalar `seed` for this call, then
      restored; see the module docstring for what randomness means after export.

    Defenses whose `export` method calls this function (`ModelShell`, `SmoothedClassifier`)
    export this way from `model.export(path)` too; a functional `rbf_defense` model exports with
    `manidefense.serving.export(model, path)` (its plain `model.export` has only `serve`).

    Args:
        model: a built Keras model (called once, or functional).
        filepath: directory to write.
        input_signature: one `tf.TensorSpec`/`keras.InputSpec` per input; default: the
            model's own input shape with a free batch dimension.
        options: keyword arguments of the model's `export_endpoints` (e.g. `num_samples`,
            `alpha` for a `SmoothedClassifier`).
        seeded: write the `*_seeded` endpoints; None writes them for models that declare
            `randomized` (themselves or in a layer), as the library's randomized defenses do.
        verbose: print Keras' summary of the endpoints.

    Returns:
        The list of endpoint names written.

    Raises:
        ValueError: `model` is not a Keras model, has no known input shape, or cannot be
            traced into a graph (the message says which part failed).

    Example:
    >>> manidefense.serving.export(defended, "/srv/models/rbf_cnn/1")
    ['serve', 'serve_seeded']
    >>> served = tf.saved_model.load("/srv/models/rbf_cnn/1")
    >>> probabilities = served.serve(tf.constant(x_test[:8]))
    >>> again = served.serve_seeded(tf.constant(x_test[:8]), tf.constant(7, tf.int64))
    """
    if not isinstance(model, keras.Model):
        raise ValueError("Argument `model` must be a keras.Model. "
                         f"Received: {type(model).__name__}")
    specs = input_signature_of(model, input_signature)
    archive = keras.export.ExportArchive()
    archive.track(model)
    generators = seed_generators(model)
    if seeded is None:
        seeded = is_randomized(model)
    if seeded and not generators:
        raise ValueError(f"Argument `seeded`=True needs a model that draws from a "
                         f"keras.random.SeedGenerator; {type(model).__name__} named "
                         f"{model.name!r} has none.")

    def serve(*inputs):
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    endpoints = {SERVE: (serve, specs)}
    if hasattr(model, "export_endpoints"):
        endpoints.update(model.export_endpoints(specs, **(options or {})))
    elif options:
        raise ValueError(f"Argument `options` is for models with extra endpoints; "
                         f"{type(model).__name__} has none. Received: options={options!r}")
    if seeded:
        for name, (fn, signature) in list(endpoints.items()):
            endpoints[f"{name}_seeded"] = (_seeded(generators, fn),
                                           [*signature, tf.TensorSpec((), tf.int64)])
    for name, (fn, signature) in endpoints.items():
        traced = tf.function(fn, input_signature=signature)
        try:  # trace now (Keras would trace in write_out) to say which endpoint fails
            traced.get_concrete_function()
        except Exception as error:  # tracing runs user code: report which endpoint failed
            raise ValueError(
                f"{type(model).__name__} named {model.name!r} cannot be exported: tracing its "
                f"`{name}` endpoint into a graph failed with {type(error).__name__}: {error}"
            ) from error
        archive.add_endpoint(name, traced)
    archive.write_out(filepath, verbose=verbose)
    return list(endpoints)


def _seeded(generators, fn):
    def seeded(*args):
        *inputs, seed = args
        return with_seed(generators, seed, lambda: fn(*inputs))

    return seeded



def with_seed(generators: list[keras.random.SeedGenerator], seed: int | tf.Tensor,
              fn: Callable[[], Any]) -> Any:
    """Runs `fn()` with every generator's state set from `seed`, then restores the states.

    Generator i gets state `[seed, i * 2**32]`: distinct streams of the same seed (a draw
    advances the second word by one, so streams never meet). Works eagerly and in a graph.

    Example:
    >>> generators = seed_generators(defended)
    >>> a = with_seed(generators, 7, lambda: defended(x))
    >>> b = with_seed(generators, 7, lambda: defended(x))  # equal to a
    """
    saved = [tf.identity(g.state) for g in generators]
    with tf.control_dependencies(saved):
        assigns = [g.state.assign(tf.stack([tf.cast(seed, g.state.dtype),
                                            tf.constant(i << 32, g.state.dtype)]))
                   for i, g in enumerate(generators)]
    with tf.control_dependencies(assigns):
        outputs = fn()
    flat = tf.nest.flatten(outputs)
    with tf.control_dependencies(flat):
        restores = [g.state.assign(value) for g, value in zip(generators, saved, strict=True)]
    with tf.control_dependencies(restores):
        return tf.nest.map_structure(tf.identity, outputs)

