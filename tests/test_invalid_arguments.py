"""Every attack names the argument it rejects: one table for all constructors.

Each row is (attack class, keyword arguments, regex the `ValueError` must match); the regex
names the argument in backticks, as every message in the library does.
"""

import pytest

from manidefense.attacks import (
    APGD,
    EAD,
    MIFGSM,
    PGD,
    SPSA,
    CarliniWagnerL2,
    CarliniWagnerLinf,
    Square,
)

INVALID = [
    (PGD, {"eps": -0.1}, "`eps`"),
    (PGD, {"eps": float("nan")}, "`eps`"),
    (PGD, {"norm": "l3"}, "`norm`"),
    (PGD, {"step_size": 0.0}, "`step_size`"),
    (PGD, {"step_size": -1.0}, "`step_size`"),
    (PGD, {"num_steps": 0}, "`num_steps`"),
    (PGD, {"bounds": (1.0, 0.0)}, "`bounds`"),
    (PGD, {"bounds": "0-1"}, "`bounds`"),
    (PGD, {"batch_size": 0}, "`batch_size`"),
    (PGD, {"num_restarts": 0}, "`num_restarts`"),
    (PGD, {"loss": "hinge"}, "`loss`"),
    (PGD, {"seed": 1.5}, "`seed`"),
    (PGD, {"l1_sparsity": 1.0}, "`l1_sparsity`"),
    (PGD, {"jit_compile": "yes"}, "`jit_compile`"),
    (MIFGSM, {"decay": -1.0}, "`decay`.*-1"),
    (APGD, {"eps": -0.1}, "`eps`"),
    (APGD, {"norm": "l3"}, "`norm`"),
    (APGD, {"norm": "l1"}, "`norm`.*APGD-L1"),
    (APGD, {"num_steps": 0}, "`num_steps`"),
    (APGD, {"rho": 1.5}, "`rho`"),
    (APGD, {"rho": -0.1}, "`rho`"),
    (APGD, {"alpha": 0.0}, "`alpha`"),
    (APGD, {"alpha": 1.5}, "`alpha`"),
    (APGD, {"loss": "hinge"}, "`loss`"),
    (APGD, {"seed": 1.5}, "`seed`"),
    (Square, {"eps": -0.1}, "`eps`"),
    (Square, {"norm": "l1"}, "`norm`"),
    (Square, {"num_queries": 0}, "`num_queries`"),
    (Square, {"p_init": 0.0}, "`p_init`"),
    (Square, {"p_init": 1.5}, "`p_init`"),
    (Square, {"loss": "hinge"}, "`loss`"),
    (SPSA, {"eps": float("nan")}, "`eps`"),
    (SPSA, {"norm": "l3"}, "`norm`"),
    (SPSA, {"num_steps": 0}, "`num_steps`"),
    (SPSA, {"step_size": 0.0}, "`step_size`"),
    (SPSA, {"perturbation_size": -0.01}, "`perturbation_size`"),
    (SPSA, {"num_samples": 2.5}, "`num_samples`"),
    (SPSA, {"batch_size": 0}, "`batch_size`"),
    (CarliniWagnerL2, {"confidence": -1.0}, "`confidence`"),
    (CarliniWagnerL2, {"learning_rate": 0.0}, "`learning_rate`"),
    (CarliniWagnerL2, {"num_steps": 0}, "`num_steps`"),
    (CarliniWagnerL2, {"binary_search_steps": 2.5}, "`binary_search_steps`"),
    (CarliniWagnerL2, {"initial_const": -1e-3}, "`initial_const`"),
    (CarliniWagnerL2, {"abort_early": "yes"}, "`abort_early`"),
    (CarliniWagnerL2, {"eps": -0.1}, "`eps`"),
    (CarliniWagnerL2, {"bounds": (1, 0)}, "`bounds`"),
    (CarliniWagnerLinf, {"largest_const": 1e-6}, "`largest_const`"),
    (CarliniWagnerLinf, {"const_factor": 1.0}, "`const_factor`"),
    (CarliniWagnerLinf, {"initial_tau": 0.0}, "`initial_tau`"),
    (CarliniWagnerLinf, {"tau_decrease": 1.0}, "`tau_decrease`"),
    (CarliniWagnerLinf, {"min_tau": 2.0}, "`min_tau`"),
    (CarliniWagnerLinf, {"eps": float("nan")}, "`eps`"),
    (EAD, {"beta": -0.1}, "`beta`"),
    (EAD, {"decision_rule": "l2"}, "`decision_rule`"),
    (EAD, {"num_steps": -5}, "`num_steps`"),
    (EAD, {"abort_early": 1}, "`abort_early`"),
]


@pytest.mark.parametrize("cls,kwargs,pattern", INVALID,
                         ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in INVALID])
def test_invalid_constructor_arguments_are_named(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**kwargs)
