"""A :class:`~pyro.infer.Trace_ELBO` that skips the terms it can prove are exactly zero.

``Trace_ELBO`` evaluates ``log p(z) − log q(z)`` at every latent site and, for sites that are not
reparameterisable, adds a score-function term ``log q(z) · (log p − log q)`` to the surrogate.
In the sparse-training model two kinds of site make all of that dead weight, each costing
several elementwise passes over every prunable weight per step:

* **a guide site that samples from the model's own prior**, i.e. ``q(Z) = p(Z)`` as the very
  same distribution object, with no parameter that requires a gradient (CigL's random mask
  ``Z ~ Bernoulli(p)``): ``log p(Z) − log q(Z) = 0`` exactly, and the score-function term
  ``∇ log q(Z) · (…)`` is zero because ``q`` has no parameters. Neither log-prob is computed.
* **a point mass at its own location** (``Delta(v)`` whose sample is ``v`` itself):
  ``log q(W) = log_density``, a constant (0), with no gradient. Only ``log_density`` is used,
  not the elementwise ``1[W = v]`` test.

Everything else -- the prior on ``W``, the likelihood, any learnable or relaxed guide site -- goes
through Pyro's usual ``compute_log_prob`` / ``compute_score_parts``. The ELBO value and the
gradients are those of ``Trace_ELBO`` (up to floating-point summation order; tested), and the
loss is read from the device once per particle instead of once per site.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan

__all__ = ["CancellingTrace_ELBO", "cancelling_sites"]


def _requires_grad(fn: Any) -> bool:
    """Whether any tensor parameter of a (possibly wrapped) distribution requires a gradient."""
    while fn is not None:
        for name in getattr(fn, "arg_constraints", {}):
            value = fn.__dict__.get(name)  # lazy properties (probs <-> logits) are not triggered
            if torch.is_tensor(value) and value.requires_grad:
                return True
        fn = getattr(fn, "base_dist", None)
    return False


def _is_own_location(site: dict) -> bool:
    """A ``Delta`` site whose value is the Delta's own location (same storage, shape and strides)."""
    fn, value = site["fn"], site["value"]
    if not isinstance(fn, Delta) or not torch.is_tensor(value):
        return False
    v = fn.v
    return value.data_ptr() == v.data_ptr() and value.shape == v.shape and value.stride() == v.stride()


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
    """``Trace_ELBO`` without the work for terms that are exactly zero (see the module docstring).

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
    """Memoise the exactly-known log-probs so ``compute_log_prob`` / ``compute_score_parts`` skip them."""
    for name in cancelling_sites(model_trace, guide_trace):
        m, g = model_trace.nodes[name], guide_trace.nodes[name]
        zero = torch.zeros((), device=g["value"].device)
        for site in (m, g):
            site["unscaled_log_prob"] = site["log_prob"] = site["log_prob_sum"] = zero
        g["score_parts"] = ScoreParts(log_prob=zero, score_function=0, entropy_term=0)
    for g in guide_trace.nodes.values():
        if g["type"] == "sample" and "score_parts" not in g and _is_own_location(g):
            log_q = g["fn"].log_density.expand(g["fn"].batch_shape)
            scaled = scale_and_mask(log_q, g["scale"], g["mask"])
            g["unscaled_log_prob"] = log_q
            g["log_prob"] = scaled
            g["log_prob_sum"] = scaled.sum()
            # reparameterised: the entropy term is log q itself (constant here, so no gradient)
            g["score_parts"] = ScoreParts(log_prob=scaled, score_function=0, entropy_term=scaled)
            if is_validation_enabled():
                warn_if_nan(g["log_prob_sum"], f"log_prob_sum at site '{g['name']}'")
