"""Model shells (Wu, Jang, Chen & Jha): wrap a base model with a search for a confident
neighbour, G[F](x) = F(H(F, x)).

- `ModelShell(base_model, search)`: the shell, a `keras.Model`.
- `MCN(delta, ...)`: most confident neighbour within a δ-ball (Algorithm 1).
- `NCN(confidence, ...)`: nearest neighbour reaching confidence p (Algorithm 2).
"""

from manidefense.shells.model_shell import ModelShell
from manidefense.shells.search import MCN, NCN, SearchFactor

__all__ = ["MCN", "NCN", "ModelShell", "SearchFactor"]
