"""CancellingTrace_ELBO = Trace_ELBO with the exactly known terms in closed form.

Given ``Z``, the point-mass guide's ELBO is Trace_ELBO's exactly (value and gradients); the Gaussian
guide's and the learned keep probabilities' are Trace_ELBO's in expectation. Neither the cancelling
``q(Z) = p(Z)`` terms nor the closed-form sites' log-densities are computed.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import models
from bayessparse.ppl import distributions as ppl_dists
from bayessparse.ppl.elbo import CancellingTrace_ELBO, cancelling_sites
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.ppl.svi import DrawnLatents
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet

N, WD, P = 500, 1e-3, 0.7


def _setup(**guide_kwargs):
    torch.manual_seed(0)
    net = models.build("mlp", 3, (12,), width=0.25)
    masks = MaskSet(net, {n: 0.4 for n in prunable_weights(net)}, torch.Generator().manual_seed(0))
    model = SparseNetModel(net, N, WD, keep_prob=P)
    guide = SparseGuide(model, masks, **guide_kwargs)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 12, generator=g), torch.randint(3, (16,), generator=g)
    # Z on the active positions; 1 on the pruned ones (q(Z)'s point mass there)
    z = {z_site(n): torch.where(masks.masks[n].bool(), (torch.rand(model.shapes[n], generator=g) < P).float(), 1.0)
         for n in model.weight_names}
    return net, masks, model, guide, x, y, z


def _loss_and_grads(elbo, model, guide, x, y, z, seed=0):
    """Loss and the gradients of every param (network tensors and the guide's own), in a fresh store."""
    torch.manual_seed(seed)  # the Gaussian guide's noise, q(Z)
    with pyro.get_param_store().scope(), pyro.validation_enabled(True), DrawnLatents(z):
        for p in model.network.parameters():
            p.grad = None
        loss = elbo.loss_and_grads(model, guide, x, y)
        store = pyro.get_param_store()
        grads = {k: store._params[k].grad.clone() for k in store.keys() if store._params[k].grad is not None}
        for k in store.keys():
            store._params[k].grad = None
    return loss, grads


@pytest.fixture
def count_log_probs(monkeypatch):
    calls = {}

    def counting(cls):
        original = cls.log_prob
        calls[cls.__name__] = 0

        def log_prob(self, value):
            calls[cls.__name__] += 1
            return original(self, value)

        monkeypatch.setattr(cls, "log_prob", log_prob)

    for cls in (ppl_dists.BernoulliMask, ppl_dists.ActiveBernoulli, ppl_dists.MaskedWeight, ppl_dists.IsotropicNormal,
                ppl_dists.KeepMask):
        counting(cls)
    return calls


def test_point_mass_given_z_is_trace_elbo_exactly():
    net, masks, model, guide, x, y, z = _setup()
    ref_loss, ref_grads = _loss_and_grads(pyro.infer.Trace_ELBO(), model, guide, x, y, z)
    loss, grads = _loss_and_grads(CancellingTrace_ELBO(), model, guide, x, y, z)
    # Trace_ELBO's -log p(W) at the sampled point masses is the closed form's divergence, up to rounding
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    assert grads.keys() == ref_grads.keys() == {model.param_name(n) for n, _ in net.named_parameters()}
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-9, msg=name)
        assert torch.equal(grads[name], grad), name
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_gaussian_guide_given_z_is_trace_elbo_in_expectation():
    """Same seed, same W draw: the two estimates differ only by the divergence's Monte-Carlo noise."""
    net, masks, model, guide, x, y, z = _setup(family="gaussian", init_scale=0.05)
    diffs, grad_diffs = [], []
    for seed in range(300):
        ref_loss, ref_grads = _loss_and_grads(pyro.infer.Trace_ELBO(), model, guide, x, y, z, seed)
        loss, grads = _loss_and_grads(CancellingTrace_ELBO(), model, guide, x, y, z, seed)
        diffs.append(loss - ref_loss)
        key = model.param_name(f"scale.{model.weight_names[1]}")
        grad_diffs.append((grads[key] - ref_grads[key]).sum().item())
    diffs, grad_diffs = torch.tensor(diffs, dtype=torch.float64), torch.tensor(grad_diffs, dtype=torch.float64)
    assert diffs.std() > 0  # Trace_ELBO's estimate is noisy, the closed form is not
    assert abs(diffs.mean()) < 4 * diffs.std() / math.sqrt(len(diffs))
    assert abs(grad_diffs.mean()) < 4 * grad_diffs.std() / math.sqrt(len(grad_diffs)) + 1e-9


def test_learned_keep_probability_is_trace_elbo_in_expectation():
    """q(Z) learned: the closed-form KL(q(Z) ‖ p(Z)) is the mean of Trace_ELBO's log q - log p (same Z draws)."""
    net, masks, model, guide, x, y, _ = _setup(keep="learned", keep_init=0.9)
    diffs = []
    for seed in range(200):
        ref_loss, _ = _loss_and_grads(pyro.infer.Trace_ELBO(), model, guide, x, y, {}, seed)
        loss, _ = _loss_and_grads(CancellingTrace_ELBO(), model, guide, x, y, {}, seed)
        diffs.append(loss - ref_loss)
    diffs = torch.tensor(diffs, dtype=torch.float64)
    assert diffs.std() > 0
    assert abs(diffs.mean()) < 4 * diffs.std() / math.sqrt(len(diffs))


def test_no_cancelling_or_closed_form_log_prob_is_computed(count_log_probs):
    net, masks, model, guide, x, y, z = _setup()
    layers = len(model.weight_names)
    _loss_and_grads(pyro.infer.Trace_ELBO(), model, guide, x, y, z)
    assert count_log_probs["BernoulliMask"] >= layers and count_log_probs["ActiveBernoulli"] >= layers  # p(Z), q(Z)
    assert count_log_probs["MaskedWeight"] >= layers and count_log_probs["IsotropicNormal"] >= layers
    for key in count_log_probs:
        count_log_probs[key] = 0
    _loss_and_grads(CancellingTrace_ELBO(), model, guide, x, y, z)
    assert set(count_log_probs.values()) == {0}, count_log_probs
    # the learned q(Z) is closed-form too
    net, masks, model, guide, x, y, _ = _setup(keep="learned", family="gaussian")
    _loss_and_grads(CancellingTrace_ELBO(), model, guide, x, y, {})
    assert set(count_log_probs.values()) == {0}, count_log_probs


def test_closed_form_terms_are_the_registered_divergences():
    net, masks, model, guide, x, y, _ = _setup(keep="learned", family="gaussian", keep_init=0.9)
    with pyro.get_param_store().scope():
        model_trace, guide_trace = CancellingTrace_ELBO()._get_trace(model, guide, (x, y), {})
        for name in model.weight_names:
            for site in (name, z_site(name)):
                m, g = model_trace.nodes[site], guide_trace.nodes[site]
                kl = torch.distributions.kl_divergence(g["fn"], m["fn"])
                assert kl.item() > 0
                torch.testing.assert_close(m["log_prob_sum"], -kl / N)  # per example: under scale 1/N
                assert g["log_prob_sum"].item() == 0


def _traces(model, guide, x, y, z):
    with pyro.get_param_store().scope(), DrawnLatents(z):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def test_only_prior_equal_guide_sites_cancel():
    net, masks, model, guide, x, y, z = _setup()
    # without a mask, q(Z) is p(Z) itself: the Z sites cancel
    model_trace, guide_trace = _traces(model, SparseGuide(model), x, y, z)
    assert set(cancelling_sites(model_trace, guide_trace)) == set(z)
    # a guide with its own (trainable) Bernoulli is not skipped, even with the same probabilities
    probs = torch.tensor(P, requires_grad=True)
    name = next(iter(z))
    guide_trace.nodes[name]["fn"] = dist.Bernoulli(probs=probs).expand(z[name].shape).to_event(z[name].dim())
    assert name not in cancelling_sites(model_trace, guide_trace)
    # under a mask q(Z) is the prior on the active positions only (closed-form, not cancelling); nor does
    # the learned q(Z) cancel
    for guide in (guide, SparseGuide(model, masks, keep="learned")):
        model_trace, guide_trace = _traces(model, guide, x, y, {})
        assert cancelling_sites(model_trace, guide_trace) == []


def test_score_function_terms_still_work_for_learnable_sites():
    """A non-reparameterised guide site with a parameter keeps Trace_ELBO's score-function gradient."""

    def model():
        pyro.sample("b", dist.Bernoulli(0.3))

    def guide():
        q = pyro.param("q", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
        pyro.sample("b", dist.Bernoulli(q))

    grads = []
    for elbo in (pyro.infer.Trace_ELBO(), CancellingTrace_ELBO()):
        with pyro.get_param_store().scope():
            torch.manual_seed(3)
            pyro.param("q", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
            elbo.loss_and_grads(model, guide)
            grads.append(pyro.param("q").unconstrained().grad.clone())
    assert grads[0] != 0 and torch.equal(grads[0], grads[1])
