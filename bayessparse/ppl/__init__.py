"""The Pyro framing: sparse training as variational inference (see docs/theory.md).

* :mod:`.model` -- :class:`SparseNetModel`: Gaussian prior on the prunable weights ``W``,
  Bernoulli random masks ``Z``, Categorical likelihood in a subsampled plate.
* :mod:`.guide` -- :class:`SparseGuide`: ``W = M ⊙ U`` (point mass, or the hierarchical Gaussian),
  ``Z ~ Bernoulli(p)``; the mask ``M`` is its structure.
* :mod:`.elbo` -- :class:`CancellingTrace_ELBO`: ``Trace_ELBO`` minus the exactly-zero terms.
* :mod:`.svi` -- :class:`PyroEngine`: the ``--engine pyro`` training step (``pyro.infer.SVI``).
* :mod:`.predictive` -- MC-``Z`` posterior predictive and the ArviZ export.

Importing this package imports Pyro; the plain trainer does so only for ``--engine pyro``.
"""

from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import IsotropicNormal, SparseNetModel, prior_scale
from bayessparse.ppl.svi import PyroEngine, ScheduledSGD, StructuredSVI

__all__ = [
    "CancellingTrace_ELBO",
    "IsotropicNormal",
    "PyroEngine",
    "ScheduledSGD",
    "SparseGuide",
    "SparseNetModel",
    "StructuredSVI",
    "prior_scale",
]
