"""The disentangling lab's data: a Gaussian mixture with a known spectrum and its linear generator.

Class `y` draws `x ~ N(μ_y, Σ)` with `Σ = U diag(λ) Uᵀ`, `λ` descending and `U` a known random
orthonormal basis. The top `manifold_dim` eigen-directions (large variance) play the data
manifold; the others (small variance) are off-manifold. The exact linear generative model
`G(z, y) = μ_y + U_k Λ_k^{1/2} z` spans the manifold, and `encode` inverts it: every `x` is
`G(z, y) + residual` with the residual in the small-variance subspace. Everything is numpy in
float64 (so identities hold to rounding), except `sample` and the Keras-facing latent codes,
which are float32. Models, attacks and analysis are in `theory.mixture_analysis`.

Reference:
    Xiao, Yang, Fan, Wang, Luo, "Disentangling Adversarial Robustness in Directions of the Data
    Manifold", ICLR 2021 submission (arXiv 2210.00430 is the later version).
"""

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from manidefense.validation import check_labels, check_positive, check_positive_int

#: Named spectra of `GaussianMixture(spectrum=...)`.
SPECTRA = ("two-level", "log")


@keras.saving.register_keras_serializable(package="manidefense")
class LinearGenerator(keras.layers.Layer):
    """The decoder `LatentPGD` attacks: `w = [z, anchor] -> basis @ z + anchor`.

    `anchor = μ_y + residual` carries what the latent attack must leave alone (the class and
    the off-manifold residual). Its gradient is stopped, so PGD steps never move it; with
    `random_start=False` the attack therefore perturbs `z` only and its budget is a budget on
    `z`. A random start would add noise to the anchor as well, so it must stay off.

    Args:
        basis: `(dim, manifold_dim)` matrix `U_k Λ_k^{1/2}`.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        w: `(batch, manifold_dim + dim)` latent codes from `GaussianMixture.latent_codes`.

    Returns:
        `(batch, dim)` float32 inputs.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
    >>> x, y = gm.sample(100, seed=1)
    >>> decoder = LinearGenerator(gm.generator_basis)
    >>> bool(np.allclose(decoder(gm.latent_codes(x, y)), x, atol=1e-4))
    True
    >>> attack = manidefense.attacks.LatentPGD(decoder, eta=0.5, random_start=False)
    """

    def __init__(self, basis: ArrayLike, **kwargs):
        super().__init__(**kwargs)
        basis = np.asarray(basis, dtype="float32")
        if basis.ndim != 2:
            raise ValueError("Argument `basis` must be a (dim, manifold_dim) matrix. "
                             f"Received: basis.shape={basis.shape}")
        self.basis = basis
        self._kernel = ops.convert_to_tensor(basis.T)

    def call(self, w):
        k = self.basis.shape[1]
        z, anchor = w[:, :k], w[:, k:]
        return ops.matmul(z, self._kernel) + ops.stop_gradient(anchor)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.basis.shape[0])

    def get_config(self):
        config = super().get_config()
        config["basis"] = self.basis.tolist()
        return config


class GaussianMixture:
    """A K-class Gaussian mixture with shared covariance and known eigenvectors.

    Means. The class means are placed in whitened coordinates `m = Λ^{-1/2} Uᵀ μ` so that both
    subspaces carry half of the squared Mahalanobis distance between classes: otherwise one
    subspace alone would decide the classes and the regular/generative contrast would be
    trivial. Two classes: `μ_1 = -μ_0` and every eigen-direction of a subspace carries the same
    share of it (random signs), so `(μ_1 - μ_0)ᵀ Σ⁻¹ (μ_1 - μ_0) = mean_distance²`. K classes:
    random orthonormal directions in each subspace, every pair at Mahalanobis distance
    `mean_distance` (needs `num_classes <= min(manifold_dim, dim - manifold_dim)`).

    Args:
        dim: input dimension d.
        num_classes: number of classes K (equiprobable).
        manifold_dim: k, the number of large-variance directions that G spans.
        large_variance, small_variance: the two eigenvalues of `spectrum="two-level"`, and the
            ends of the log-spaced `spectrum="log"` (ignored for an array spectrum).
        spectrum: `"two-level"`, `"log"` or an array of d positive eigenvalues (sorted into
            descending order).
        mean_distance: Mahalanobis distance between class means (3.0: Bayes error 6.7% for two
            classes).
        seed: int seed of the eigenvectors and the means.

    Example:
    >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
    >>> x, y = gm.sample(1000, seed=1)
    >>> z, residual = gm.encode(x, y)  # x == gm.generate(z, y) + residual
    """

    def __init__(self, dim: int = 50, num_classes: int = 2, manifold_dim: int = 5,
                 large_variance: float = 4.0, small_variance: float = 0.05,
                 spectrum: str | ArrayLike = "two-level", mean_distance: float = 3.0,
                 seed: int = 0):
        self.dim = check_positive_int("dim", dim)
        if self.dim < 2:
            raise ValueError(f"Argument `dim` must be >= 2. Received: dim={dim!r}")
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.manifold_dim = check_positive_int("manifold_dim", manifold_dim)
        if self.manifold_dim >= self.dim:
            raise ValueError("Argument `manifold_dim` must be < dim (a small-variance subspace "
                             f"must remain). Received: manifold_dim={manifold_dim!r}, dim={dim}")
        limit = min(self.manifold_dim, self.dim - self.manifold_dim)
        if self.num_classes < 2 or (self.num_classes > 2 and self.num_classes > limit):
            raise ValueError(
                "Argument `num_classes` must be 2, or between 3 and min(manifold_dim, dim - "
                f"manifold_dim) = {limit} (orthogonal class means in each subspace). "
                f"Received: num_classes={num_classes!r}")
        self.large_variance = check_positive("large_variance", large_variance)
        self.small_variance = check_positive("small_variance", small_variance)
        self.mean_distance = check_positive("mean_distance", mean_distance)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"Argument `seed` must be an int. Received: seed={seed!r}")
        self.seed = int(seed)
        self.spectrum = spectrum
        self.eigenvalues = self._spectrum(spectrum)
        rng = np.random.default_rng(self.seed)
        q, r = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        self.eigenvectors = q * np.sign(np.diag(r))  # Haar-distributed orthonormal U
        self.means = self._place_means(rng)
        self._decoder = None

    # === Construction ===

    def _spectrum(self, spectrum):
        d, k = self.dim, self.manifold_dim
        if isinstance(spectrum, str):
            if spectrum not in SPECTRA:
                raise ValueError(f"Argument `spectrum` must be one of {SPECTRA} or an array of "
                                 f"{d} eigenvalues. Received: spectrum={spectrum!r}")
            if self.large_variance <= self.small_variance:
                raise ValueError(
                    "Argument `large_variance` must exceed `small_variance`. Received: "
                    f"large_variance={self.large_variance}, small_variance={self.small_variance}")
            if spectrum == "two-level":
                return np.array([self.large_variance] * k + [self.small_variance] * (d - k))
            return np.geomspace(self.large_variance, self.small_variance, d)
        values = np.asarray(spectrum, dtype="float64")
        if values.shape != (d,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"Argument `spectrum` as an array must hold {d} finite positive "
                             f"eigenvalues. Received: shape {values.shape}, values "
                             f"{np.array2string(values.ravel()[:5], precision=3)}...")
        values = np.sort(values)[::-1]
        if values[k - 1] <= values[k]:
            raise ValueError(
                "Argument `spectrum` must have a gap after the top manifold_dim eigenvalues "
                f"(the manifold is their eigenspace). Received: λ_k={values[k - 1]:.4g}, "
                f"λ_(k+1)={values[k]:.4g} for manifold_dim={k}")
        return values

    def _place_means(self, rng):
        d, k, n = self.dim, self.manifold_dim, self.num_classes
        if n == 2:
            scale = np.r_[np.full(k, 1 / np.sqrt(2 * k)), np.full(d - k, 1 / np.sqrt(2 * (d - k)))]
            half = 0.5 * self.mean_distance * scale * rng.choice([-1.0, 1.0], size=d)
            whitened = np.stack([-half, half])
        else:
            def orthonormal(m):
                q, _ = np.linalg.qr(rng.standard_normal((m, n)))
                return q.T  # (n, m), orthonormal rows
            unit = np.concatenate([orthonormal(k), orthonormal(d - k)], axis=1) / np.sqrt(2)
            whitened = self.mean_distance / np.sqrt(2) * unit
            whitened = whitened - whitened.mean(axis=0)
        return (whitened * np.sqrt(self.eigenvalues)) @ self.eigenvectors.T

    # === Distribution ===

    @property
    def covariance(self) -> np.ndarray:
        """`Σ = U diag(λ) Uᵀ`, `(dim, dim)` float64."""
        return (self.eigenvectors * self.eigenvalues) @ self.eigenvectors.T

    @property
    def large_subspace(self) -> np.ndarray:
        """Boolean mask `(dim,)` of the eigen-directions G spans (the large variances)."""
        return np.arange(self.dim) < self.manifold_dim

    def sample(self, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draws `n` examples: labels uniform over the classes, then `x ~ N(μ_y, Σ)`.

        Args:
            n: number of examples.
            seed: int for a reproducible draw; None draws fresh randomness.

        Returns:
            `(x, y)`: float32 `(n, dim)` inputs and int64 `(n,)` labels.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> x, y = gm.sample(1000, seed=1)
        >>> x.shape, x.dtype, y.dtype
        ((1000, 50), dtype('float32'), dtype('int64'))
        """
        n = check_positive_int("n", n)
        rng = np.random.default_rng(seed)
        y = rng.integers(0, self.num_classes, size=n).astype("int64")
        noise = rng.standard_normal((n, self.dim)) * np.sqrt(self.eigenvalues)
        x = self.means[y] + noise @ self.eigenvectors.T
        return x.astype("float32"), y

    def coordinates(self, x: ArrayLike) -> np.ndarray:
        """Coordinates of `x` in the eigenbasis, `(n, dim)` float64: `Uᵀ x` per row.

        Args:
            x: inputs `(n, dim)`.

        Returns:
            `(n, dim)` float64; column `i` is the coordinate along the `i`-th eigenvector
            (the first `manifold_dim` span the manifold).

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> x, y = gm.sample(1000, seed=1)
        >>> bool(np.allclose(gm.coordinates(x) @ gm.eigenvectors.T, x, atol=1e-5))
        True
        """
        return self._inputs(x) @ self.eigenvectors

    def bayes_direction(self) -> np.ndarray:
        """`Σ⁻¹ (μ_1 - μ_0)`: the normal of the Bayes (LDA) boundary of a two-class mixture.

        Returns:
            A `(dim,)` float64 vector.

        Raises:
            ValueError: the mixture has more than two classes.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> w = gm.bayes_direction()
        >>> round(float((gm.means[1] - gm.means[0]) @ w), 6)  # mean_distance ** 2
        9.0
        """
        if self.num_classes != 2:
            raise ValueError("`bayes_direction` is defined for two classes; use "
                             "`bayes_weights` for K classes. Received: num_classes="
                             f"{self.num_classes}")
        return self._precision_times(self.means[1] - self.means[0])

    def bayes_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The Bayes-optimal linear classifier (LDA): `logits = x @ kernel + bias`.

        `kernel[:, c] = Σ⁻¹ μ_c` and `bias[c] = -μ_cᵀ Σ⁻¹ μ_c / 2` (equal priors).

        Returns:
            `(kernel (dim, num_classes), bias (num_classes,))`, float64.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> kernel, bias = gm.bayes_weights()
        >>> x, y = gm.sample(2000, seed=1)
        >>> float(np.mean(np.argmax(x @ kernel + bias, axis=1) == y))  # Bayes error ~6.7%
        0.938
        """
        kernel = self._precision_times(self.means).T
        bias = -0.5 * np.sum(self.means * kernel.T, axis=1)
        return kernel, bias

    def _precision_times(self, v):
        return ((v @ self.eigenvectors) / self.eigenvalues) @ self.eigenvectors.T

    # === The linear generative model ===

    @property
    def generator_basis(self) -> np.ndarray:
        """`U_k Λ_k^{1/2}`, `(dim, manifold_dim)`: G's linear map from z to inputs."""
        k = self.manifold_dim
        return self.eigenvectors[:, :k] * np.sqrt(self.eigenvalues[:k])

    def generate(self, z: ArrayLike, y: ArrayLike) -> np.ndarray:
        """`G(z, y) = μ_y + U_k Λ_k^{1/2} z`, `(n, dim)` float64; `z ~ N(0, I_k)` gives the
        class's on-manifold component.

        Args:
            z: latents `(n, manifold_dim)`.
            y: integer labels `(n,)`.

        Returns:
            `(n, dim)` float64 inputs on the class's manifold.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> bool(np.allclose(gm.generate(np.zeros((1, 5)), [1]), gm.means[1]))
        True
        """
        z = np.asarray(z, dtype="float64")
        if z.ndim != 2 or z.shape[1] != self.manifold_dim:
            raise ValueError(f"Argument `z` must have shape (n, {self.manifold_dim}). "
                             f"Received: z.shape={z.shape}")
        y = check_labels(y, len(z), "y", self.num_classes)
        return self.means[y] + z @ self.generator_basis.T

    def encode(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Inverts G: returns `(z, residual)` with `x = generate(z, y) + residual`.

        `z = Λ_k^{-1/2} U_kᵀ (x - μ_y)`; the residual is the rest of `x - μ_y`, which lies in
        the small-variance subspace. Both float64.

        Args:
            x: inputs `(n, dim)`.
            y: integer labels `(n,)`.

        Returns:
            `(z, residual)`: `(n, manifold_dim)` and `(n, dim)`, float64.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> x, y = gm.sample(1000, seed=1)
        >>> z, residual = gm.encode(x, y)
        >>> bool(np.allclose(gm.generate(z, y) + residual, x, atol=1e-5))
        True
        """
        x = self._inputs(x)
        y = check_labels(y, len(x), "y", self.num_classes)
        centred = x - self.means[y]
        k = self.manifold_dim
        u_k = self.eigenvectors[:, :k]
        z = (centred @ u_k) / np.sqrt(self.eigenvalues[:k])
        return z, centred - (centred @ u_k) @ u_k.T

    def latent_codes(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """`w = [z, μ_y + residual]`, float32 `(n, manifold_dim + dim)`, the latents that
        `decoder` maps back to `x` and that `LatentPGD` attacks (it moves `z` only).

        Args:
            x: inputs `(n, dim)`.
            y: integer labels `(n,)`.

        Returns:
            `(n, manifold_dim + dim)` float32 latent codes.

        Example:
        >>> gm = manidefense.theory.GaussianMixture(dim=50, manifold_dim=5, seed=0)
        >>> x, y = gm.sample(1000, seed=1)
        >>> w = gm.latent_codes(x, y)
        >>> w.shape, bool(np.allclose(gm.decoder(w), x, atol=1e-4))
        ((1000, 55), True)
        """
        x = self._inputs(x)
        z, residual = self.encode(x, y)
        y = np.asarray(y)
        return np.concatenate([z, self.means[y] + residual], axis=1).astype("float32")

    @property
    def decoder(self) -> LinearGenerator:
        """The `LinearGenerator` layer for `latent_codes` (built once per mixture)."""
        if self._decoder is None:
            self._decoder = LinearGenerator(self.generator_basis, name="gmm_generator")
        return self._decoder

    def _inputs(self, x, name="x"):
        x = np.asarray(x, dtype="float64")
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) == 0:
            raise ValueError(f"Argument `{name}` must have shape (n, {self.dim}) with n >= 1. "
                             f"Received: {name}.shape={x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"Argument `{name}` must be finite. Received: "
                             f"{int(np.sum(~np.isfinite(x)))} NaN or Inf values")
        return x

    def __repr__(self):
        spectrum = self.spectrum if isinstance(self.spectrum, str) else "array"
        return (f"GaussianMixture(dim={self.dim}, num_classes={self.num_classes}, "
                f"manifold_dim={self.manifold_dim}, spectrum={spectrum!r}, "
                f"λ=[{self.eigenvalues[0]:.3g} .. {self.eigenvalues[-1]:.3g}], "
                f"mean_distance={self.mean_distance}, seed={self.seed})")
