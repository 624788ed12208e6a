"""What the models that wrap a built base model (shells, the smoothed classifier, trainers) share.

They hold no weights of their own, so they are built as soon as the base model is; building
them through `build` with the base's input shape records that shape, which `model.export`,
`summary` and `.keras` loading read.
"""


def base_input_shape(base):
    """The base model's input shape, or None when it has none yet (an unbuilt subclass)."""
    try:
        shape = base.input_shape
    except (AttributeError, ValueError):
        return None
    return tuple(shape) if isinstance(shape, (tuple, list)) and shape and (
        shape[0] is None or isinstance(shape[0], int)) else None


def build_from_base(model, base):
    """Builds `model` (last step of its `__init__`: building locks Keras' state tracking)."""
    shape = base_input_shape(base) if getattr(base, "built", False) else None
    if shape is not None:
        model.build(shape)
    # else: left unbuilt, so the first call builds it and records the shape it was called with


def build_from_saved(model, config):
    """`build_from_config` of a wrapper: rebuild with the saved input shape when there is one."""
    if not model.built or model._build_shapes_dict is None:
        if config and "input_shape" in config:
            model.build(tuple(config["input_shape"]))
    model.built = True
