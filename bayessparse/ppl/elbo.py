"""The engine's ELBO: :class:`~pyro.infer.Trace_ELBO` with the exactly known terms in closed form.

``Trace_ELBO`` estimates ``E_q[log p(z) − log q(z)]`` at every latent site from the one sample it
draws. In the sparse-network model two kinds of site have that term exactly, and computing it
directly is both cheaper and free of Monte-Carlo noise:

* **a guide site that samples from the model's own prior**, i.e. ``q(Z) = p(Z)`` as the very
  same distribution object, with no parameter that requires a gradient (CigL's random mask
  ``Z ~ Bernoulli(p₀)``): ``log p(Z) − log q(Z) = 0`` exactly, and the score-function term
  ``∇ log q(Z) · (…)`` is zero because ``q`` has no parameters. Neither log-prob is computed.
* **a guide site whose divergence from the prior has a closed form** (:data:`CLOSED_FORM`: the
  weights' :class:`~.distributions.MaskedWeight` against the Gaussian prior, the learned
  :class:`~.distributions.KeepMask` against the Bernoulli prior): the term is ``-KL(q ‖ p)``
  (given the sampled values upstream, e.g. ``Z`` for ``q(W | Z)``), as in
  :class:`~pyro.infer.TraceMeanField_ELBO`. The site's sample still flows, reparameterised, into
  everything downstream of it (the likelihood; ``Z`` into ``q(W | Z)``).

Everything else -- the likelihood, a flat prior, any other guide -- goes through Pyro's usual
``compute_log_prob`` / ``compute_score_parts``. The ELBO and its gradients are those of
``Trace_ELBO`` in expectation (for the point mass given ``Z`` exactly; tested), and the loss is
read from the device once per particle instead of once per site.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan
from torch.distributions import kl_divergence

from bayessparse.ppl.distributions import ActiveBernoulli, KeepMask, MaskedWeight

__all__ = ["CLOSED_FORM", "CancellingTrace_ELBO", "cancelling_sites"]

#: Guide distributions whose divergence from the model's prior is used in closed form.
CLOSED_FORM = (ActiveBernoulli, KeepMask, MaskedWeight)


def _requires_grad(fn: Any) -> bool:
    """Whether any tensor parameter of a (possibly wrapped) distribution requires a gradient."""
    while fn is not None:
        for name in getattr(fn, "arg_constraints", {}):
            value = fn.__dict__.get(name)  # lazy properties (probs <-> logits) are not triggered
            if torch.is_tensor(value) and value.requires_grad:
                return True
        fn = getattr(fn, "base_dist", None)
    return False


def cancelling_sites(model_trace: Any, guide_trace: Any) -> list[str]:
    """Latent sites whose guide distribution *is* the model's (same object, no trainable parameter)."""
    names = []
    for name, g in guide_trace.nodes.items():
        if g["type"] != "sample" or g["is_observed"]:
            continue
        m = model_trace.nodes.get(name)
        if (
            m is not None
            and m["type"] == "sample"
            and not m["is_observed"]
            and m["fn"] is g["fn"]
            and m["value"] is g["value"]
            and not _requires_grad(g["fn"])
        ):
            names.append(name)
    return names


class CancellingTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` with cancelling terms skipped and closed-form divergences (see the module docstring).

    Use exactly like ``Trace_ELBO``. Guides that are ``GuideMessenger`` s fall back to it.
    """

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
            return super()._get_trace(model, guide, args, kwargs)
        # pyro.infer.enum.get_importance_trace, with the exact terms filled in before the
        # (memoised) log-prob computations, which then skip them.
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        _fill_exact_terms(model_trace, guide_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> tuple[Any, Any]:
        # Trace_ELBO's, with the ELBO accumulated as a tensor and read out once (one device
        # synchronisation per particle, not one per site).
        elbo = 0.0
        surrogate = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"]
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    weight = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = surrogate + (weight * score_function_term).sum()
        elbo_value = torch_item(elbo.detach() if torch.is_tensor(elbo) else elbo)
        return -elbo_value, -surrogate


def _fill_exact_terms(model_trace: Any, guide_trace: Any) -> None:
    """Memoise the exactly-known terms so ``compute_log_prob`` / ``compute_score_parts`` skip them."""
    for name in cancelling_sites(model_trace, guide_trace):
        m, g = model_trace.nodes[name], guide_trace.nodes[name]
        zero = torch.zeros((), device=g["value"].device)
        for site in (m, g):
            site["unscaled_log_prob"] = site["log_prob"] = site["log_prob_sum"] = zero
        g["score_parts"] = ScoreParts(log_prob=zero, score_function=0, entropy_term=0)
    for name, g in guide_trace.nodes.items():
        if g["type"] != "sample" or "score_parts" in g or not isinstance(g["fn"], CLOSED_FORM):
            continue
        m = model_trace.nodes.get(name)
        if m is None or m["type"] != "sample" or m["is_observed"]:
            continue
        try:
            kl = kl_divergence(g["fn"], m["fn"])
        except NotImplementedError:
            continue
        # E_q[log p - log q] in closed form, given the sampled values of the sites upstream; the site's
        # sample still flows (reparameterised) into everything downstream of it.
        scaled = scale_and_mask(-kl, m["scale"], m["mask"])
        m["unscaled_log_prob"] = -kl
        m["log_prob"] = scaled
        m["log_prob_sum"] = scaled if scaled.dim() == 0 else scaled.sum()
        zero = torch.zeros_like(scaled)  # the site's batch shape (vectorised particles)
        g["unscaled_log_prob"] = g["log_prob"] = zero
        g["log_prob_sum"] = zero if zero.dim() == 0 else zero.sum()
        g["score_parts"] = ScoreParts(log_prob=zero, score_function=0, entropy_term=0)
        if is_validation_enabled():
            warn_if_nan(m["log_prob_sum"], f"closed-form divergence at site '{name}'")
