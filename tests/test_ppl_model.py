"""The Pyro model and guide: sites, scales, the prior's estimators, and that W = M ⊙ U masks gradients."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import models
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import Categorical, IsotropicNormal, SparseNetModel, param_site, prior_scale
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet

N, WD = 1000, 5e-4


def _net(seed=0):
    torch.manual_seed(seed)
    return models.build("cnn1d", 3, (16,))


def _data(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, generator=g), torch.randint(3, (b,), generator=g)


def _traces(model, guide, x, y, values=None):
    from bayessparse.ppl.svi import DrawnLatents

    with pyro.get_param_store().scope(), DrawnLatents(values or {}):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def test_prior_scale_ties_weight_decay_data_size_and_keep_probability():
    assert prior_scale(WD, N) == pytest.approx(1 / math.sqrt(N * WD))
    assert prior_scale(WD, N, keep_prob=0.9) == pytest.approx(1 / math.sqrt(0.9 * N * WD))
    assert prior_scale(0.0, N) is None
    with pytest.raises(ValueError):
        prior_scale(WD, N, keep_prob=0.0)


def test_sites_params_and_plate_scale():
    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.8)
    guide = SparseGuide(model)
    x, y = _data()
    model_trace, guide_trace = _traces(model, guide, x, y)
    weights = list(prunable_weights(net))
    layers = [w.rsplit(".", 1)[0] for w in weights]
    latent = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    assert latent == set(weights) | {f"{layer}.z" for layer in layers} | {"data"}
    # plain parameters are model params, prunable weights are guide params (the means U)
    model_params = {n for n, s in model_trace.nodes.items() if s["type"] == "param"}
    guide_params = {n for n, s in guide_trace.nodes.items() if s["type"] == "param"}
    assert guide_params == {param_site(w) for w in weights}
    assert model_params == {param_site(n) for n, _ in net.named_parameters()} - guide_params
    obs = model_trace.nodes["obs"]
    assert obs["is_observed"] and obs["scale"] == pytest.approx(N / len(y))
    z_prior = model_trace.nodes[layers[0] + ".z"]["fn"]
    assert isinstance(z_prior.base_dist, dist.Bernoulli) and torch.all(z_prior.base_dist.probs == 0.8)
    assert z_prior is guide_trace.nodes[layers[0] + ".z"]["fn"]  # q(Z) is p(Z), the same object
    # no Z sites without a random mask
    model_trace, _ = _traces(SparseNetModel(net, N, WD), SparseGuide(SparseNetModel(net, N, WD)), x, y)
    assert not any(n.endswith(".z") for n in model_trace.nodes)


def test_isotropic_normal_is_the_expanded_normal():
    w = torch.randn(4, 3, 5)
    d = IsotropicNormal(0.7, w.shape)
    ref = dist.Normal(0.0, 0.7).expand(w.shape).to_event(3)
    assert d.log_prob(w).item() == pytest.approx(ref.log_prob(w).item(), rel=1e-6)
    assert d.event_shape == w.shape and d.batch_shape == ()
    torch.manual_seed(0)
    s = d.sample((2000,))
    assert s.shape == (2000, 4, 3, 5) and s.std().item() == pytest.approx(0.7, rel=0.02)
    assert d.log_prob(s).shape == (2000,)


def _prior_grad(model, name, w, z=None):
    w = w.clone().requires_grad_(True)
    (-model.weight_prior(name, z).log_prob(w) / model.num_data).backward()
    return w.grad


def test_per_example_prior_gradient_is_weight_decay():
    model = SparseNetModel(_net(), N, WD)
    name = model.weight_names[1]
    w = torch.randn(model.shapes[name])
    torch.testing.assert_close(_prior_grad(model, name, w), WD * w)


def test_thinned_prior_estimator_is_unbiased_and_decays_only_kept_weights():
    p = 0.7
    thinned = SparseNetModel(_net(), N, WD, keep_prob=p)
    exact = SparseNetModel(_net(), N, WD, keep_prob=p, prior_estimator="exact")
    name = thinned.weight_names[1]
    w = torch.randn(thinned.shapes[name])
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(w.shape, generator=g) < p).float()
    torch.testing.assert_close(_prior_grad(thinned, name, w, z), WD * z * w)  # CigL: only kept weights decay
    torch.testing.assert_close(_prior_grad(exact, name, w, z), p * WD * w)  # same expectation, no variance
    full = exact.weight_prior(name, z).log_prob(w).item()
    draws = torch.stack([
        thinned.weight_prior(name, (torch.rand(w.shape, generator=g) < p).float()).log_prob(w) for _ in range(4000)
    ])
    assert draws.mean().item() == pytest.approx(full, abs=4 * draws.std().item() / math.sqrt(len(draws)))


def test_zero_weight_decay_is_a_flat_prior():
    model = SparseNetModel(_net(), N, 0.0)
    prior = model.weight_prior(model.weight_names[0], None)
    assert isinstance(prior, dist.ImproperUniform)
    assert prior.log_prob(torch.randn(model.shapes[model.weight_names[0]])).item() == 0.0


def test_guide_point_mass_is_masked_means_and_masks_gradients():
    net = _net()
    shapes = {n: w.shape for n, w in prunable_weights(net).items()}
    masks = MaskSet(net, {n: 0.3 for n in shapes}, torch.Generator().manual_seed(0))
    model = SparseNetModel(net, N, WD)
    guide = SparseGuide(model, masks)
    x, y = _data()
    with pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x, y)
        for name, w in prunable_weights(net).items():
            site = trace.nodes[name]
            assert isinstance(site["fn"], dist.Delta) and site["fn"].event_dim == w.dim()
            assert torch.equal(site["value"], w.detach() * masks.masks[name])
            assert torch.equal(guide.location(name), w.detach() * masks.masks[name])
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x, y)
        loss.backward()
    for name, w in prunable_weights(net).items():
        assert torch.all(w.grad[masks.masks[name] == 0] == 0), name  # dL/dU = M ⊙ dL/dW
        assert w.grad[masks.masks[name] == 1].abs().sum() > 0


def test_hierarchical_guide_tends_to_the_point_mass():
    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.9)
    x, y = _data()
    z = {n.rsplit(".", 1)[0] + ".z": torch.ones(model.shapes[n]) for n in model.weight_names}

    def logits(scale):
        model_trace, _ = _traces(model, SparseGuide(model, scale=scale), x, y, z)
        return model_trace.nodes["_RETURN"]["value"]

    torch.manual_seed(0)
    assert (logits(1e-6) - logits(None)).abs().max() < 1e-4
    assert (logits(0.1) - logits(None)).abs().max() > 1e-2


def test_categorical_log_prob_uses_the_cross_entropy_kernel_and_matches_pyro():
    logits = torch.randn(6, 4)
    y = torch.randint(4, (6,))
    ours, ref = Categorical(logits=logits), dist.Categorical(logits=logits)
    torch.testing.assert_close(ours.log_prob(y), ref.log_prob(y))
    torch.testing.assert_close(ours.log_prob(y), -torch.nn.functional.cross_entropy(logits, y, reduction="none"), rtol=0, atol=0)
    assert ours.expand((6,)) is ours
    assert ours.expand((2, 6)).log_prob(y).shape == (2, 6)


def test_extension_learnable_relaxed_keep_probability():
    """Beyond the paper: a relaxed straight-through Z with a learnable keep logit per layer."""
    from bayessparse.ppl.elbo import CancellingTrace_ELBO

    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.8, relaxed_temperature=0.5)
    assert model.prior_estimator == "exact"
    guide = SparseGuide(model, learn_keep=True)
    x, y = _data(32)
    with pytest.raises(ValueError):
        SparseNetModel(net, N, WD, keep_prob=0.8, relaxed_temperature=0.5, prior_estimator="thinned")
    with pytest.raises(ValueError):
        SparseGuide(SparseNetModel(net, N, WD, keep_prob=0.8), learn_keep=True)
    grads = []
    for elbo in (pyro.infer.Trace_ELBO(), CancellingTrace_ELBO()):  # relaxed sites are not skipped
        with pyro.get_param_store().scope():
            torch.manual_seed(0)
            elbo.loss_and_grads(poutine.scale(model, 1 / N), poutine.scale(guide, 1 / N), x, y)
            grads.append(pyro.param("keep_logit.features.3").unconstrained().grad.clone())
    assert torch.isfinite(grads[0]) and grads[0] != 0 and torch.equal(grads[0], grads[1])
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(poutine.scale(model, 1 / N), poutine.scale(guide, 1 / N),
                             pyro.optim.Adam({"lr": 0.05}), CancellingTrace_ELBO())
        for _ in range(10):
            assert math.isfinite(svi.step(x, y))
        logit = pyro.param("keep_logit.classifier").item()
    assert logit != pytest.approx(math.log(0.8 / 0.2))  # the keep probability was learnt
