"""The Pyro framing: sparse training as variational inference (see docs/theory.md).

* :mod:`.model` -- :class:`SparseNetModel`: ``W ~ N(0, σ²)``, ``Z ~ Bernoulli(p₀)`` independent of
  it, a Categorical (or Gaussian) likelihood through ``Z ⊙ W`` in a subsampled plate.
* :mod:`.distributions` -- the per-layer prior and variational factors, with closed-form divergences.
* :mod:`.guide` -- :class:`SparseGuide`: ``M`` structures ``q(W | Z)`` (point mass or masked mean
  field) and ``q(Z)`` (the prior, or learned keep probabilities on the active weights).
* :mod:`.elbo` -- :class:`CancellingTrace_ELBO`: ``Trace_ELBO`` with the exactly known terms in closed form.
* :mod:`.svi` -- :class:`PyroEngine`: the ``--engine pyro`` training step (``pyro.infer.SVI``).
* :mod:`.predictive` -- :func:`predictive` (any model and guide) and the ArviZ export.
* :mod:`.bnn` -- :class:`SparseBNN`: fit / predict / evaluate in a few lines.
* :mod:`.autoguide` -- :class:`MaskedAutoGuide`: Pyro's AutoGuides on the active weights of a fixed ``M``.

Importing this package imports Pyro; the plain trainer does so only for ``--engine pyro``.
"""

from bayessparse.ppl.autoguide import MaskedAutoGuide
from bayessparse.ppl.bnn import SparseBNN
from bayessparse.ppl.distributions import FlatPrior, IsotropicNormal, KeepMask, MaskedWeight
from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, prior_scale
from bayessparse.ppl.predictive import predictive
from bayessparse.ppl.svi import PyroEngine, ScheduledSGD, StructuredSVI

__all__ = [
    "CancellingTrace_ELBO",
    "FlatPrior",
    "IsotropicNormal",
    "KeepMask",
    "MaskedAutoGuide",
    "MaskedWeight",
    "PyroEngine",
    "ScheduledSGD",
    "SparseBNN",
    "SparseGuide",
    "SparseNetModel",
    "StructuredSVI",
    "predictive",
    "prior_scale",
]
