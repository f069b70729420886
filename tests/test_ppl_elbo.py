"""CancellingTrace_ELBO = Trace_ELBO, without the per-weight log-probs of exactly-zero terms."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Bernoulli

import models
from bayessparse.ppl.elbo import CancellingTrace_ELBO, cancelling_sites
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.ppl.svi import DrawnLatents
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet

N, WD, P = 500, 1e-3, 0.7


def _setup(scale=None):
    torch.manual_seed(0)
    net = models.build("mlp", 3, (12,))
    masks = MaskSet(net, {n: 0.4 for n in prunable_weights(net)}, torch.Generator().manual_seed(0))
    model = SparseNetModel(net, N, WD, keep_prob=P)
    guide = SparseGuide(model, masks, scale=scale)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 12, generator=g), torch.randint(3, (16,), generator=g)
    z = {z_site(n): (torch.rand(model.shapes[n], generator=g) < P).float() for n in model.weight_names}
    return net, model, guide, x, y, z


def _loss_and_grads(elbo, net, model, guide, x, y, z, seed=0):
    for p in net.parameters():
        p.grad = None
    torch.manual_seed(seed)  # the hierarchical guide's Gaussian noise
    with pyro.get_param_store().scope(), pyro.validation_enabled(True), DrawnLatents(z):
        loss = elbo.loss_and_grads(pyro.poutine.scale(model, 1 / N), pyro.poutine.scale(guide, 1 / N), x, y)
    return loss, {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.fixture
def count_log_probs(monkeypatch):
    calls = {"bernoulli": 0, "delta": 0}

    def counting(cls, key):
        original = cls.log_prob

        def log_prob(self, value):
            calls[key] += 1
            return original(self, value)

        monkeypatch.setattr(cls, "log_prob", log_prob)

    counting(Bernoulli, "bernoulli")
    counting(dist.Delta, "delta")
    return calls


@pytest.mark.parametrize("scale", [None, 1e-3])
def test_same_loss_and_gradients_as_trace_elbo(scale):
    net, model, guide, x, y, z = _setup(scale)
    ref_loss, ref_grads = _loss_and_grads(pyro.infer.Trace_ELBO(), net, model, guide, x, y, z)
    loss, grads = _loss_and_grads(CancellingTrace_ELBO(), net, model, guide, x, y, z)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    for name, grad in ref_grads.items():
        assert torch.equal(grads[name], grad), name
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_no_bernoulli_or_delta_log_prob_is_computed(count_log_probs):
    net, model, guide, x, y, z = _setup()
    layers = len(model.weight_names)
    _loss_and_grads(pyro.infer.Trace_ELBO(), net, model, guide, x, y, z)
    assert count_log_probs["bernoulli"] >= 2 * layers and count_log_probs["delta"] == layers
    count_log_probs.update(bernoulli=0, delta=0)
    _loss_and_grads(CancellingTrace_ELBO(), net, model, guide, x, y, z)
    assert count_log_probs == {"bernoulli": 0, "delta": 0}


def test_only_prior_equal_guide_sites_cancel():
    net, model, guide, x, y, z = _setup()
    with pyro.get_param_store().scope(), DrawnLatents(z):
        guide_trace = pyro.poutine.trace(guide).get_trace(x, y)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    assert set(cancelling_sites(model_trace, guide_trace)) == set(z)
    # a guide with its own (trainable) Bernoulli is not skipped, even with the same probabilities
    probs = torch.tensor(P, requires_grad=True)
    name = next(iter(z))
    guide_trace.nodes[name]["fn"] = dist.Bernoulli(probs=probs).expand(z[name].shape).to_event(z[name].dim())
    assert name not in cancelling_sites(model_trace, guide_trace)


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
