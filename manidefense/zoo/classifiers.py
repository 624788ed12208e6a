"""Small image classifiers used by the demo, the tests and the benchmarks."""

import keras

from manidefense.validation import check_positive_int


def small_cnn(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10,
              width: int = 32, name: str = "small_cnn") -> keras.Sequential:
    """The reference CNN: conv32-conv64-pool-conv128-pool-dense256-dense10, returning logits.

    3×3 ReLU convolutions; `width` scales every layer (width=32 is the reference used in
    `bench/` and in the library's performance notes, ≈61.5 MFLOP per 28×28 image).

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: number of output logits.
        width: channels of the first convolution; the others are 2× and 4× that, the dense
            layer 8×.
        name: model name.

    Returns:
        An uncompiled `keras.Sequential` model with logits outputs.

    Example:
    >>> model = manidefense.zoo.small_cnn()
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    width = check_positive_int("width", width)
    num_classes = check_positive_int("num_classes", num_classes)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=tuple(input_shape)),
            layers.Conv2D(width, 3, activation="relu", padding="same"),
            layers.Conv2D(2 * width, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(4 * width, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(8 * width, activation="relu"),
            layers.Dense(num_classes),
        ],
        name=name,
    )
