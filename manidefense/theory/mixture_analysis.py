"""Classifiers, attacks and measurements on a `GaussianMixture` (the disentangling lab).

Regular adversarial examples are PGD in input space; generative ones are `LatentPGD` on the
mixture's latent `z` through its exact linear generator (class and off-manifold residual held
fixed). `energy_by_direction` splits a perturbation over the eigenvectors, `boundary_margin`
measures how far the decision boundary lies along each of them, and `boundary_slice` samples
the decision values on a plane of two eigenvectors for `visualization.plot_boundary_slice`.

Training. `theory` sits below `training` in the import layers, so it does not build the
trainer: `training_attacks` returns the attacks to give `training.DualManifoldTrainer`
(standard training: no attack; AT: PGD in input space; latent AT: LatentPGD on z), and
`train_classifier` fits either a plain classifier or such a trainer, deterministically.

Example:
>>> gm = manidefense.theory.GaussianMixture(seed=0)
>>> x, y = gm.sample(4000, seed=1)
>>> clf = manidefense.theory.logistic_regression(gm.dim, seed=0)
>>> trainer = manidefense.training.DualManifoldTrainer(
...     clf, **manidefense.theory.training_attacks(gm, "latent", eta=1.0), seed=0)
>>> history = manidefense.theory.train_classifier(trainer, gm, x, y, epochs=20)
>>> x_adv = manidefense.theory.generative_attack(clf, gm, x[:500], y[:500], eta=1.0)
>>> split = manidefense.theory.energy_split(x_adv - x[:500], gm)
>>> round(float(np.nanmean(split["large"])), 6)  # all of the perturbation on the manifold
1.0
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike

from manidefense.attacks import PGD, LatentPGD
from manidefense.theory.gaussian_mixture import GaussianMixture
from manidefense.validation import (
    check_choice,
    check_labels,
    check_non_negative,
    check_norm,
    check_positive,
    check_positive_int,
)

#: Training methods of `training_attacks`.
METHODS = ("standard", "regular", "latent")


# === Classifiers ===

def logistic_regression(dim: int, num_classes: int = 2, seed: int | None = None,
                        name: str = "logistic_regression") -> keras.Sequential:
    """Multinomial logistic regression: one Dense layer returning `num_classes` logits.

    Args:
        dim: input dimension.
        num_classes: number of logits.
        seed: seed of the initial weights.
        name: the model's name.

    Returns:
        A `keras.Sequential` model.

    Example:
    >>> manidefense.theory.logistic_regression(50, seed=0).output_shape
    (None, 2)
    """
    dim, num_classes = check_positive_int("dim", dim), check_positive_int("num_classes",
                                                                         num_classes)
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed)),
    ], name=name)


def mlp(dim: int, num_classes: int = 2, width: int = 64, seed: int | None = None,
        name: str = "mlp") -> keras.Sequential:
    """A one-hidden-layer ReLU perceptron returning logits.

    Args:
        dim: input dimension.
        num_classes: number of logits.
        width: hidden units.
        seed: seed of the initial weights.
        name: the model's name.

    Returns:
        A `keras.Sequential` model.

    Example:
    >>> manidefense.theory.mlp(50, width=32, seed=0).count_params()  # 50·32 + 32 + 32·2 + 2
    1698
    """
    dim, num_classes = check_positive_int("dim", dim), check_positive_int("num_classes",
                                                                         num_classes)
    width = check_positive_int("width", width)
    seeds = (None, None) if seed is None else (seed, seed + 1)
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(width, activation="relu",
                           kernel_initializer=keras.initializers.HeNormal(seeds[0])),
        keras.layers.Dense(num_classes,
                           kernel_initializer=keras.initializers.GlorotUniform(seeds[1])),
    ], name=name)


def bayes_classifier(gm: GaussianMixture, name: str = "bayes_classifier") -> keras.Sequential:
    """A `logistic_regression` holding the mixture's Bayes-optimal (LDA) weights.

    Args:
        gm: the `GaussianMixture`.
        name: the model's name.

    Returns:
        A `keras.Sequential` model whose logits are `x @ kernel + bias` of `gm.bayes_weights()`.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> manidefense.theory.robust_accuracy_matrix({"bayes": bayes_classifier(gm)}, {}, x, y)
    {'bayes': {'clean': 0.938}}
    """
    model = logistic_regression(gm.dim, gm.num_classes, name=name)
    kernel, bias = gm.bayes_weights()
    model.layers[-1].set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


# === Training ===

def training_attacks(gm: GaussianMixture, method: str = "standard", eps: float | None = None,
                     eta: float | None = None, norm: str = "l2",
                     num_steps: int = 5) -> dict[str, Any]:
    """The attacks of standard training, AT or latent AT, as `DualManifoldTrainer` arguments.

    Args:
        gm: the `GaussianMixture` the data come from.
        method: `"standard"` (no attack), `"regular"` (PGD on x, Madry AT) or `"latent"`
            (LatentPGD on z through the mixture's generator, on-manifold AT).
        eps: input-space budget for `"regular"`.
        eta: latent budget for `"latent"`.
        norm: `"l2"`, `"linf"` or `"l1"`.
        num_steps: PGD steps per training batch (step size `2.5 * budget / num_steps`).

    Returns:
        `{"image_attack": PGD | None, "latent_attack": LatentPGD | None}`.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(seed=0)
    >>> attacks = manidefense.theory.training_attacks(gm, "regular", eps=0.5)
    >>> attacks["image_attack"].eps, attacks["latent_attack"]
    (0.5, None)
    >>> clf = manidefense.theory.logistic_regression(gm.dim, seed=0)
    >>> trainer = manidefense.training.DualManifoldTrainer(clf, **attacks, seed=0)
    """
    method = check_choice("method", method, METHODS)
    norm = check_norm(norm)
    image = latent = None
    if method == "regular":
        eps = check_positive("eps", _required("eps", eps, method))
        image = PGD(eps=eps, norm=norm, num_steps=num_steps, bounds=_mixture_bounds(gm, eps))
    elif method == "latent":
        eta = check_positive("eta", _required("eta", eta, method))
        # No random start: it would also perturb the anchor part of the latent codes.
        latent = LatentPGD(gm.decoder, eta=eta, norm=norm, num_steps=num_steps,
                           random_start=False)
    return {"image_attack": image, "latent_attack": latent}


def train_classifier(model: keras.Model, gm: GaussianMixture, x: ArrayLike, y: ArrayLike,
                     epochs: int = 20, batch_size: int = 128, learning_rate: float = 1e-2,
                     seed: int = 0) -> dict[str, list[float]]:
    """Fits a classifier (standard training) or a `DualManifoldTrainer` with Adam.

    Each epoch visits the examples in a permutation drawn from `seed`, so equal seeds (and
    equally initialised models) give equal weights. A trainer gets batches `((x, w), y)` with
    `w = gm.latent_codes(x, y)`.

    Args:
        model: a classifier returning logits (compiled here with cross-entropy), or a
            `DualManifoldTrainer` built with `training_attacks(gm, ...)` (compiled here).
        gm: the mixture (for the latent codes).
        x: training inputs `(n, dim)`.
        y: integer labels.
        epochs: passes over the data.
        batch_size: examples per step.
        learning_rate: Adam's learning rate.
        seed: int seed of the epochs' permutations.

    Returns:
        A dict of per-epoch metric lists (as `History.history`).

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> clf = manidefense.theory.logistic_regression(gm.dim, seed=0)
    >>> history = manidefense.theory.train_classifier(clf, gm, x, y, epochs=3)
    >>> sorted(history), len(history["loss"])
    (['accuracy', 'loss'], 3)
    """
    x = gm._inputs(x).astype("float32")
    y = check_labels(y, len(x), "y", gm.num_classes)
    epochs, batch_size = check_positive_int("epochs", epochs), check_positive_int("batch_size",
                                                                                  batch_size)
    optimizer = keras.optimizers.Adam(check_positive("learning_rate", learning_rate))
    is_trainer = hasattr(model, "latent_attack")
    if is_trainer:
        inputs = (x, gm.latent_codes(x, y))
        model.compile(optimizer=optimizer)
    else:
        inputs = x
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    history = {}
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        batch = tuple(a[order] for a in inputs) if is_trainer else inputs[order]
        result = model.fit(batch, y[order], batch_size=batch_size, epochs=epoch + 1,
                           initial_epoch=epoch, shuffle=False, verbose=0)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
    return history


# === Attacks ===

def regular_attack(model: keras.Model, x: ArrayLike, y: ArrayLike, eps: float, norm: str = "l2",
                   num_steps: int = 20, step_size: float | None = None, random_start: bool = True,
                   loss: str = "margin", seed: int | None = 0) -> np.ndarray:
    """PGD in input space (a regular adversarial example); returns float32 `x_adv`.

    `loss="margin"` (the logit margin, CW) by default: cross-entropy's gradient underflows to
    zero in float32 at confidently classified points, which then would not move at all. For
    a two-class affine model both give the same direction.

    Args:
        model: a classifier.
        x: inputs `(n, dim)`.
        y: integer labels.
        eps: the budget in `norm`. The box `bounds` PGD needs is made wide enough never to
            bind (mixture data are unbounded).
        norm: `"l2"`, `"linf"` or `"l1"`.
        num_steps: PGD steps.
        step_size: step length; default `2.5 * eps / num_steps`.
        random_start: start uniformly inside the eps-ball.
        loss: `"margin"`, `"ce"` or `"dlr"`.
        seed: int or None.

    Returns:
        float32 `x_adv`, `(n, dim)`.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> x_adv = manidefense.theory.regular_attack(bayes_classifier(gm), x, y, eps=1.0)
    >>> bool(np.all(np.linalg.norm(x_adv - x, axis=1) <= 1.0 + 1e-4))
    True
    """
    eps = check_non_negative("eps", eps)
    x = np.asarray(x, dtype="float32")
    attack = PGD(eps=eps, norm=norm, step_size=step_size, num_steps=num_steps,
                 random_start=random_start, bounds=_data_bounds(x, eps), loss=loss, seed=seed)
    return attack(model, x, y)


def generative_attack(model: keras.Model, gm: GaussianMixture, x: ArrayLike, y: ArrayLike,
                      eta: float, norm: str = "l2", num_steps: int = 20,
                      step_size: float | None = None, loss: str = "margin",
                      seed: int | None = 0) -> np.ndarray:
    """LatentPGD on `z` with the class and the residual fixed: `x_adv = G(z + λ, y) + r`.

    The budget `eta` bounds `λ` in `norm` (latent units: `z ~ N(0, I)`); in input space the
    perturbation is `U_k Λ_k^{1/2} λ`, entirely inside the large-variance subspace. There is no
    random start (see `LinearGenerator`); `loss` as in `regular_attack`.

    Args:
        model: a classifier.
        gm: the mixture whose generator is attacked through.
        x: inputs `(n, dim)`.
        y: integer labels.
        eta: the latent budget.
        norm: `"l2"`, `"linf"` or `"l1"`, on `z`.
        num_steps: PGD steps.
        step_size: step length; default `2.5 * eta / num_steps`.
        loss: `"margin"`, `"ce"` or `"dlr"`.
        seed: int or None.

    Returns:
        float32 `x_adv`, `(n, dim)`.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> clf = bayes_classifier(gm)
    >>> x_adv = manidefense.theory.generative_attack(clf, gm, x[:100], y[:100], eta=1.0)
    >>> split = manidefense.theory.energy_split(x_adv - x[:100], gm)
    >>> float(np.nanmin(split["large"]).round(3))  # all of it on the manifold
    1.0
    """
    eta = check_non_negative("eta", eta)
    x = gm._inputs(x)
    w = gm.latent_codes(x, y)
    attack = LatentPGD(gm.decoder, eta=eta, norm=norm, step_size=step_size, num_steps=num_steps,
                       random_start=False, loss=loss, seed=seed)
    w_adv = attack(model, w, y)
    # x + G's change in float64, not the decoder's float32 output: an example the attack left
    # alone then comes back exactly (not with rounding noise spread over every direction).
    step = (w_adv[:, :gm.manifold_dim] - w[:, :gm.manifold_dim]).astype("float64")
    return (x + step @ gm.generator_basis.T).astype("float32")


def optimal_l2_perturbation(model: keras.Model, x: ArrayLike, y: ArrayLike,
                            eps: float) -> np.ndarray:
    """The closed-form L2 attack of a two-class affine classifier: `eps · v / ||v||` with
    `v = W[:, 1-y] - W[:, y]`, the steepest ascent of the logit margin (and of the
    cross-entropy). For the Bayes classifier `v = ±Σ⁻¹(μ_1 - μ_0)`.

    Args:
        model: an affine two-class classifier.
        x: inputs `(n, dim)`.
        y: labels in {0, 1}.
        eps: the L2 budget.

    Returns:
        float64 `(n, dim)` perturbations.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> delta = manidefense.theory.optimal_l2_perturbation(bayes_classifier(gm), x[:5], y[:5],
    ...                                                     eps=1.0)
    >>> np.linalg.norm(delta, axis=1).round(6)
    array([1., 1., 1., 1., 1.])
    """
    x = np.asarray(x, dtype="float64")
    kernel, _ = affine_weights(model, x.shape[-1])
    if kernel.shape[1] != 2:
        raise ValueError("`optimal_l2_perturbation` needs a two-class model. Received: "
                         f"{kernel.shape[1]} outputs")
    y = check_labels(y, len(x), "y", 2)
    v = (kernel[:, 1 - y] - kernel[:, y]).T
    return check_non_negative("eps", eps) * v / np.linalg.norm(v, axis=1, keepdims=True)


def affine_weights(model: keras.Model, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`(kernel (dim, K), bias (K,))` of an affine model, read from its outputs at 0 and at
    the unit vectors; raises if the model is not affine (checked at random points).

    Args:
        model: a classifier `logits = x @ kernel + bias`.
        dim: input dimension.

    Returns:
        `(kernel, bias)`, float64.

    Raises:
        ValueError: the model is not affine.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> kernel, bias = manidefense.theory.affine_weights(bayes_classifier(gm), gm.dim)
    >>> bool(np.allclose(kernel, gm.bayes_weights()[0], atol=1e-5))
    True
    """
    eye = np.concatenate([np.zeros((1, dim)), np.eye(dim)]).astype("float32")
    out = _logits(model, eye)
    bias, kernel = out[0], out[1:] - out[0]
    probe = np.random.default_rng(0).standard_normal((8, dim)).astype("float32")
    error = np.abs(_logits(model, probe) - (probe @ kernel + bias)).max()
    if error > 1e-3 * (1.0 + np.abs(kernel).sum(axis=0).max()):
        raise ValueError(f"Argument `model` must be affine (logits = x @ W + b). Received: a "
                         f"model deviating by {error:.3g} from its affine fit")
    return kernel, bias


# === Analysis ===

def energy_by_direction(delta: ArrayLike, gm: GaussianMixture) -> np.ndarray:
    """Squared projections of each perturbation on each eigenvector: `(n, dim)`, column i for
    the i-th largest variance.

    Args:
        delta: perturbations `(n, dim)`.
        gm: the mixture (its eigenvectors).

    Returns:
        float64 `(n, dim)`; each row sums to the squared L2 norm of its perturbation.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(seed=0)
    >>> delta = np.random.default_rng(0).standard_normal((10, gm.dim))
    >>> energy = manidefense.theory.energy_by_direction(delta, gm)
    >>> energy.shape, bool(np.allclose(energy.sum(axis=1), np.sum(delta ** 2, axis=1)))
    ((10, 50), True)
    """
    return gm.coordinates(delta) ** 2


def energy_split(delta: ArrayLike, gm: GaussianMixture) -> dict[str, np.ndarray]:
    """Fractions of each perturbation's squared L2 norm in the large- and small-variance
    subspaces: `{"large": (n,), "small": (n,)}` (NaN for a zero perturbation).

    Args:
        delta: perturbations `(n, dim)`.
        gm: the mixture.

    Returns:
        `{"large": (n,), "small": (n,)}` float64 fractions summing to 1.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(seed=0)
    >>> on_manifold = gm.generate(np.ones((1, 5)), [0]) - gm.means[0]
    >>> split = manidefense.theory.energy_split(on_manifold, gm)
    >>> split["large"].round(6), split["small"].round(6)
    (array([1.]), array([0.]))
    """
    energy = energy_by_direction(delta, gm)
    total = energy.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        large = np.where(total > 0, energy[:, gm.large_subspace].sum(axis=1) / total, np.nan)
        small = np.where(total > 0, energy[:, ~gm.large_subspace].sum(axis=1) / total, np.nan)
    return {"large": large, "small": small}


def boundary_margin(model: keras.Model, x: ArrayLike, gm: GaussianMixture,
                    max_distance: float | None = None, num_grid: int = 64, num_bisections: int = 24,
                    batch_size: int = 16384) -> np.ndarray:
    """Distance from each point to the decision boundary along each eigenvector.

    Along the line `x + t·u_i` (both signs of t), the smallest `|t|` where the predicted class
    changes: first found on a grid of `num_grid` points up to `max_distance`, then refined by
    bisection (so a boundary that is crossed twice between grid points is missed).

    Args:
        model: a classifier.
        x: `(n, dim)` points.
        gm: the `GaussianMixture` (its U).
        max_distance: the cap, returned when no boundary is met; default 20·sqrt(λ_1).
        num_grid: grid points per direction and sign (the search resolution, with
            `num_bisections`: error ≤ cap / num_grid / 2^num_bisections).
        num_bisections: bisection steps after the grid.
        batch_size: points per model call.

    Returns:
        float64 `(n, dim)` distances, column i for the i-th largest variance.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> margins = manidefense.theory.boundary_margin(bayes_classifier(gm), x[:20], gm)
    >>> margins.shape
    (20, 50)
    """
    x = gm._inputs(x)
    cap = (20.0 * np.sqrt(gm.eigenvalues[0]) if max_distance is None
           else check_positive("max_distance", max_distance))
    num_grid = check_positive_int("num_grid", num_grid)
    num_bisections = check_positive_int("num_bisections", num_bisections)
    u = gm.eigenvectors.T  # (dim directions, dim)
    signs = np.array([-1.0, 1.0])
    pred = _predict(model, x, batch_size)
    grid = cap * np.arange(1, num_grid + 1) / num_grid
    n, d = x.shape
    lo, hi = np.zeros((n, d, 2)), np.full((n, d, 2), np.inf)
    for i in range(d):
        points = (x[:, None, None] + signs[None, :, None, None] * grid[None, None, :, None]
                  * u[i])  # (n, 2, grid, dim)
        changed = _predict(model, points.reshape(-1, d), batch_size).reshape(n, 2, num_grid)
        changed = changed != pred[:, None, None]
        first = np.argmax(changed, axis=-1)
        found = changed.any(axis=-1)
        hi[:, i] = np.where(found, grid[first], np.inf)
        lo[:, i] = np.where(found & (first > 0), grid[np.maximum(first - 1, 0)], 0.0)
    found = np.isfinite(hi)
    for _ in range(num_bisections):
        mid = np.where(found, 0.5 * (lo + hi), 0.0)
        points = x[:, None, None] + signs[None, None, :, None] * mid[..., None] * u[None, :, None]
        changed = _predict(model, points.reshape(-1, d), batch_size).reshape(n, d, 2)
        changed = changed != pred[:, None, None]
        hi, lo = np.where(changed & found, mid, hi), np.where(~changed & found, mid, lo)
    return np.minimum(hi.min(axis=-1), cap)


def boundary_shift(before: ArrayLike, after: ArrayLike, gm: GaussianMixture) -> dict[str, float]:
    """How far training moved the boundary, per subspace: the ratio of median margins
    (`after / before`, per eigen-direction), geometric mean over the subspace's directions.

    Args:
        before: `boundary_margin` before training, `(n, dim)`.
        after: `boundary_margin` of the same points after training.
        gm: the mixture.

    Returns:
        `{"large": ratio, "small": ratio}`; > 1 means the boundary moved away from the data.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(seed=0)  # manifold_dim=5 of dim=50
    >>> before = np.ones((10, 50))
    >>> after = before * np.r_[np.full(5, 2.0), np.ones(45)]
    >>> manidefense.theory.boundary_shift(before, after, gm)
    {'large': 2.0, 'small': 1.0}
    """
    before, after = np.asarray(before, "float64"), np.asarray(after, "float64")
    if before.shape != after.shape or before.ndim != 2 or before.shape[1] != gm.dim:
        raise ValueError(f"Arguments `before` and `after` must be (n, {gm.dim}) margins of "
                         f"equal shape. Received: {before.shape} and {after.shape}")
    ratio = np.median(after, axis=0) / np.median(before, axis=0)
    large = gm.large_subspace
    return {"large": float(np.exp(np.log(ratio[large]).mean())),
            "small": float(np.exp(np.log(ratio[~large]).mean()))}


def boundary_slice(model: keras.Model, gm: GaussianMixture, i: int = 0, j: int | None = None,
                   extent: Sequence[float] | None = None, resolution: int = 101,
                   center: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's logits on the plane `center + s·u_i + t·u_j` (for `plot_boundary_slice`).

    Args:
        model: a classifier.
        gm: the mixture.
        i: the first eigen-direction index (default: the first large-variance direction).
        j: the second index (default: the first small-variance direction).
        extent: half-widths `(s_max, t_max)`; default 4 standard deviations along each.
        resolution: grid points per axis.
        center: the plane's origin, `(dim,)`; default the mean of the class means.

    Returns:
        `(s, t, logits)`: the `(resolution,)` coordinates along u_i and u_j and the
        `(resolution, resolution, num_classes)` logits, indexed `[t, s]` (image order).

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> s, t, logits = manidefense.theory.boundary_slice(bayes_classifier(gm), gm, resolution=51)
    >>> s.shape, logits.shape
    ((51,), (51, 51, 2))
    """
    j = gm.manifold_dim if j is None else j
    for name, index in (("i", i), ("j", j)):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (
                0 <= index < gm.dim):
            raise ValueError(f"Argument `{name}` must be an eigen-direction index in [0, "
                             f"{gm.dim}). Received: {name}={index!r}")
    if i == j:
        raise ValueError(f"Arguments `i` and `j` must differ. Received: i={i}, j={j}")
    if extent is None:
        extent = 4.0 * np.sqrt(gm.eigenvalues[[i, j]])
    s_max, t_max = (check_positive(f"extent[{k}]", float(e)) for k, e in enumerate(extent))
    resolution = check_positive_int("resolution", resolution)
    center = gm.means.mean(axis=0) if center is None else gm._inputs(
        np.reshape(center, (1, -1)), "center")[0]
    s, t = np.linspace(-s_max, s_max, resolution), np.linspace(-t_max, t_max, resolution)
    ss, tt = np.meshgrid(s, t)
    u = gm.eigenvectors
    points = center + ss.reshape(-1, 1) * u[:, i] + tt.reshape(-1, 1) * u[:, j]
    return s, t, _logits(model, points).reshape(resolution, resolution, -1)


def robust_accuracy_matrix(models: Mapping[str, keras.Model], attacks: Mapping[str, Callable],
                           x: ArrayLike, y: ArrayLike) -> dict[str, dict[str, float]]:
    """Accuracy of every model on clean inputs and under every attack.

    Args:
        models: dict name -> classifier.
        attacks: dict name -> callable `(model, x, y) -> x_adv` (an `Attack`, or e.g.
            `lambda m, x, y: generative_attack(m, gm, x, y, eta=1.0)`).
        x: test inputs.
        y: integer labels.

    Returns:
        `{model name: {"clean": accuracy, attack name: accuracy, ...}}`.

    Example:
    >>> from manidefense.theory import GaussianMixture, bayes_classifier
    >>> gm = GaussianMixture(seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> attacks = {"pgd": lambda m, x, y: manidefense.theory.regular_attack(m, x, y, eps=1.0)}
    >>> manidefense.theory.robust_accuracy_matrix({"bayes": bayes_classifier(gm)}, attacks,
    ...                                           x[:500], y[:500])
    {'bayes': {'clean': 0.932, 'pgd': 0.044}}
    """
    x = np.asarray(x, dtype="float32")
    y = check_labels(y, len(x), "y")
    table = {}
    for name, model in models.items():
        row = {"clean": float(np.mean(_predict(model, x) == y))}
        for attack_name, attack in attacks.items():
            row[attack_name] = float(np.mean(_predict(model, attack(model, x, y)) == y))
        table[name] = row
    return table


# === Helpers ===

def _required(name, value, method):
    if value is None:
        raise ValueError(f"Argument `{name}` is required for method={method!r}. "
                         f"Received: {name}=None")
    return value


def _mixture_bounds(gm, eps):
    # PGD needs a finite box but mixture data are unbounded: one that holds the means plus 10
    # standard deviations along every axis, plus the budget, never binds in practice.
    half = np.abs(gm.means).max() + 10.0 * np.sqrt(gm.eigenvalues[0]) + eps
    return (-float(half), float(half))


def _data_bounds(x, eps):
    # A box holding every input with its whole eps-ball (any norm's ball lies in the L∞ ball
    # of the same radius), so clipping to it never changes the attack.
    half = float(np.abs(x).max()) + eps + 1.0
    return (-half, half)


def _logits(model, x, batch_size=16384):
    x = np.asarray(x, dtype="float32")
    parts = [keras.ops.convert_to_numpy(model(x[k:k + batch_size], training=False))
             for k in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype("float64")


def _predict(model, x, batch_size=16384):
    return np.argmax(_logits(model, x, batch_size), axis=-1)
