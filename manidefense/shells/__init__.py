"""Model shells (Wu, Jang, Chen & Jha): wrap a base model with a search for a confident
neighbour, G[F](x) = F(H(F, x)).

- `ModelShell(base_model, search)`: the shell, a `keras.Model`.
- `MCN(delta, ...)`: most confident neighbour within a δ-ball (Algorithm 1).
- `NCN(confidence, ...)`: nearest neighbour reaching confidence p (Algorithm 2).
- `UnifiedSearch(lambda_, ...)`: the unified objective of eq. 5.
- `SamplingVote(num_samples, radius)`: a confidence-weighted vote over random neighbours.
"""

from manidefense.shells.model_shell import ModelShell
from manidefense.shells.search import MCN, NCN, SamplingVote, SearchFactor, UnifiedSearch

__all__ = ["MCN", "NCN", "ModelShell", "SamplingVote", "SearchFactor", "UnifiedSearch"]
