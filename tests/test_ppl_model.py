"""The Pyro model and guide: sites, names, scales, the prior, and that W = M ⊙ U masks gradients."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import models
from bayessparse.ppl.distributions import FlatPrior, IsotropicNormal, MaskedWeight
from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import Categorical, SparseNetModel, prior_scale, z_site
from bayessparse.ppl.svi import DrawnLatents
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet

N, WD = 1000, 5e-4


def _net(seed=0):
    torch.manual_seed(seed)
    return models.build("cnn1d", 3, (16,))


def _data(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, generator=g), torch.randint(3, (b,), generator=g)


def _masks(net, density=0.3, seed=0):
    return MaskSet(net, {n: density for n in prunable_weights(net)}, torch.Generator().manual_seed(seed))


def _z(model, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {z_site(n): (torch.rand(model.shapes[n], generator=g) < p).float() for n in model.weight_names}


def _traces(model, guide, x, y, values=None):
    with pyro.get_param_store().scope(), DrawnLatents(values or {}):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def test_prior_scale_ties_weight_decay_and_data_size():
    assert prior_scale(WD, N) == pytest.approx(1 / math.sqrt(N * WD))
    assert prior_scale(4 * WD, N) == pytest.approx(0.5 / math.sqrt(N * WD))
    assert prior_scale(0.0, N) is None
    for bad in ((-1e-4, N), (WD, 0)):
        with pytest.raises(ValueError):
            prior_scale(*bad)
    model = SparseNetModel(_net(), N, WD, keep_prob=0.9)
    assert model.scale == pytest.approx(1 / math.sqrt(N * WD))  # the keep probability does not enter the prior
    assert all(p.scale == model.scale for p in model.weight_priors.values())


@pytest.mark.parametrize("per_example", [True, False])
def test_sites_params_and_scales(per_example):
    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.8, per_example=per_example, name="m")
    guide = SparseGuide(model)
    x, y = _data()
    model_trace, guide_trace = _traces(model, guide, x, y)
    weights = list(prunable_weights(net))
    layers = [w.rsplit(".", 1)[0] for w in weights]
    latent = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    assert latent == set(weights) | {f"{layer}.z" for layer in layers} | {"data"}
    # plain parameters are model params, prunable weights are guide params (the means U), all under "m."
    model_params = {n for n, s in model_trace.nodes.items() if s["type"] == "param"}
    guide_params = {n for n, s in guide_trace.nodes.items() if s["type"] == "param"}
    assert guide_params == {f"m.{w}" for w in weights}
    assert model_params == {f"m.{n}" for n, _ in net.named_parameters()} - guide_params
    assert model.param_name("features.0.bias") == "m.features.0.bias"
    # per example: every site (params, latents, the data plate) under poutine.scale(1/N) ...
    unit = 1.0 / N if per_example else 1.0
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            if site["type"] in ("sample", "param") and name != "obs":
                assert site["scale"] == pytest.approx(unit), name
    # ... so the subsampled likelihood, N / B by the plate, is the batch mean (or the N / B-scaled sum)
    obs = model_trace.nodes["obs"]
    assert obs["is_observed"] and obs["scale"] == pytest.approx(unit * N / len(y))
    z_prior = model_trace.nodes[layers[0] + ".z"]["fn"]
    assert torch.all(z_prior.mean == 0.8) and z_prior.event_shape == model.shapes[weights[0]]
    torch.manual_seed(0)
    assert z_prior.sample((50,)).mean().item() == pytest.approx(0.8, abs=0.02)
    assert z_prior.log_prob(torch.ones(z_prior.event_shape)).item() == pytest.approx(
        z_prior.event_shape.numel() * math.log(0.8))
    assert z_prior is guide_trace.nodes[layers[0] + ".z"]["fn"]  # q(Z) is p(Z), the same object
    assert isinstance(model_trace.nodes[weights[0]]["fn"], IsotropicNormal)
    assert isinstance(guide_trace.nodes[weights[0]]["fn"], MaskedWeight)
    # no Z sites without a random mask
    dense = SparseNetModel(net, N, WD, name="dense")
    model_trace, _ = _traces(dense, SparseGuide(dense), x, y)
    assert not any(n.endswith(".z") for n in model_trace.nodes)


def test_per_example_scale_is_the_mean_cross_entropy():
    net = _net()
    x, y = _data(b=6)
    model = SparseNetModel(net, N, 0.0, name="flat")  # flat prior: the ELBO is the likelihood alone
    with pyro.get_param_store().scope():
        loss = CancellingTrace_ELBO().loss(model, SparseGuide(model), x, y)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(net(x), y).item(), rel=1e-5)
    total = SparseNetModel(net, N, 0.0, name="total", per_example=False)
    with pyro.get_param_store().scope():
        loss_total = CancellingTrace_ELBO().loss(total, SparseGuide(total), x, y)
    assert loss_total == pytest.approx(N * loss, rel=1e-5)


def test_model_param_names_are_prefixed_per_model():
    a, b = SparseNetModel(_net(), N, WD), SparseNetModel(_net(), N, WD)
    assert a.name != b.name
    assert a.param_name("x") == f"{a.name}.x" and b.param_name("x") == f"{b.name}.x"


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
    torch.testing.assert_close(d.log_prob(s[:7]), ref.log_prob(s[:7]))
    # batch dimensions (vectorised particles): expand keeps the event, log_prob broadcasts
    batched = d.expand((3, 1))
    assert batched.batch_shape == (3, 1) and batched.event_shape == w.shape and batched.scale == 0.7
    assert batched.log_prob(w).shape == (3, 1) and batched.sample().shape == (3, 1, 4, 3, 5)
    with pytest.raises(ValueError):
        IsotropicNormal(0.0, w.shape)


def test_per_example_prior_gradient_is_weight_decay():
    model = SparseNetModel(_net(), N, WD)
    name = model.weight_names[1]
    w = torch.randn(model.shapes[name], requires_grad=True)
    (-model.weight_priors[name].log_prob(w) / model.num_data).backward()
    torch.testing.assert_close(w.grad, WD * w.detach())


def test_only_kept_weights_decay_given_z():
    """CigL's update: with the step's Z fixed, the ELBO's prior gradient on U is wd·Z⊙M⊙U (dropped and
    pruned means are not decayed). Trace_ELBO (sampled) and the closed form agree on it."""
    p = 0.7
    net = _net()
    masks = _masks(net, 0.5)
    model = SparseNetModel(net, N, WD, keep_prob=p)
    guide = SparseGuide(model, masks)
    x, y = _data()
    z = _z(model, p)
    grads = []
    for elbo in (pyro.infer.Trace_ELBO(), CancellingTrace_ELBO()):
        for w in net.parameters():
            w.grad = None
        # the likelihood hidden: only the prior and q terms remain
        with pyro.get_param_store().scope(), DrawnLatents(z):
            elbo.loss_and_grads(poutine.block(model, hide=["obs"]), guide, x)
        grads.append({n: w.grad.clone() for n, w in prunable_weights(net).items()})
    for name, w in prunable_weights(net).items():
        expected = WD * z[z_site(name)] * masks.masks[name] * w.detach()
        assert expected.abs().sum() > 0
        for g in grads:
            torch.testing.assert_close(g[name], expected)


def test_zero_weight_decay_is_a_flat_prior():
    model = SparseNetModel(_net(), N, 0.0)
    prior = model.weight_priors[model.weight_names[0]]
    assert isinstance(prior, FlatPrior) and isinstance(prior, dist.ImproperUniform) and model.scale is None
    assert prior.log_prob(torch.randn(model.shapes[model.weight_names[0]])).item() == 0.0
    x, _ = _data()
    with pytest.raises(ValueError):
        model.prior_predictive(x, 2)


def test_guide_point_mass_is_masked_means_and_masks_gradients():
    net = _net()
    masks = _masks(net)
    model = SparseNetModel(net, N, WD)
    guide = SparseGuide(model, masks)
    x, y = _data()
    with pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x, y)
        expected = guide.expected_weights()
        for name, w in prunable_weights(net).items():
            site = trace.nodes[name]
            assert isinstance(site["fn"], MaskedWeight) and site["fn"].event_shape == w.shape
            assert site["fn"].scale is None  # point mass
            assert torch.equal(site["value"], w.detach() * masks.masks[name])
            assert torch.equal(expected[name], w.detach() * masks.masks[name])
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x, y)
        loss.backward()
    for name, w in prunable_weights(net).items():
        assert torch.all(w.grad[masks.masks[name] == 0] == 0), name  # dL/dU = M ⊙ dL/dW
        assert w.grad[masks.masks[name] == 1].abs().sum() > 0


def test_gaussian_guide_tends_to_the_point_mass():
    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.9)
    x, y = _data()
    z = {z_site(n): torch.ones(model.shapes[n]) for n in model.weight_names}

    def logits(**kwargs):
        model_trace, _ = _traces(model, SparseGuide(model, **kwargs), x, y, z)
        return model_trace.nodes["_RETURN"]["value"]

    torch.manual_seed(0)
    point = logits()
    assert (logits(family="gaussian", init_scale=1e-6) - point).abs().max() < 1e-4
    assert (logits(family="gaussian", init_scale=0.1) - point).abs().max() > 1e-2


def test_categorical_log_prob_uses_the_cross_entropy_kernel_and_matches_pyro():
    logits = torch.randn(6, 4)
    y = torch.randint(4, (6,))
    ours, ref = Categorical(logits=logits), dist.Categorical(logits=logits)
    torch.testing.assert_close(ours.log_prob(y), ref.log_prob(y))
    torch.testing.assert_close(ours.log_prob(y), -torch.nn.functional.cross_entropy(logits, y, reduction="none"),
                               rtol=0, atol=0)
    assert ours.expand((6,)) is ours
    assert ours.expand((2, 6)).log_prob(y).shape == (2, 6)


def test_constructor_checks():
    net = _net()
    with pytest.raises(ValueError):
        SparseNetModel(net, N, WD, keep_prob=0.0)
    with pytest.raises(ValueError):
        SparseNetModel(net, N, WD, likelihood="poisson")
    with pytest.raises(ValueError):  # no Z sites: nothing to learn a keep probability for
        SparseGuide(SparseNetModel(net, N, WD), keep="learned")
    model = SparseNetModel(net, N, WD, keep_prob=0.8)
    for kwargs in ({"family": "laplace"}, {"keep": "fixed"}, {"keep_shape": "weight"}, {"temperature": 0.0},
                   {"keep": "learned", "keep_init": 1.0}, {"init_scale": 0.0}):
        with pytest.raises(ValueError):
            SparseGuide(model, **kwargs)


def test_learnable_relaxed_keep_probability():
    """Beyond the paper: a relaxed straight-through Z with a learnable keep logit per layer."""
    net = _net()
    model = SparseNetModel(net, N, WD, keep_prob=0.8, name="learn")
    guide = SparseGuide(model, keep="learned", temperature=0.5)
    x, y = _data(32)
    key = "learn.keep_prob.classifier"
    grads = []
    for elbo in (pyro.infer.Trace_ELBO(), CancellingTrace_ELBO()):
        with pyro.get_param_store().scope():
            torch.manual_seed(0)
            elbo.loss_and_grads(model, guide, x, y)
            grads.append(pyro.param(key).unconstrained().grad.clone())
    for g in grads:
        assert torch.isfinite(g) and g != 0
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), CancellingTrace_ELBO())
        for _ in range(10):
            assert math.isfinite(svi.step(x, y))
        logit = pyro.param(key).item()
    assert logit != pytest.approx(math.log(0.8 / 0.2))  # the keep probability was learnt
