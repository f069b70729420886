"""The variational sparse network, factor by factor: p(Z), q(Z), q(W | Z) and the structure M.

Each of the first groups of tests is there to fail for one specific wrong factor; the comment in the
test names the code mutation it was checked against (mutated once locally, seen red, reverted):

* ``KeepMask`` (q(Z)): relaxed straight-through Bernoulli(sigmoid θ) on the active positions of M,
  a parameter-free point mass at 1 elsewhere; the θ-dependent part of KL(q ‖ p) is
  Σ_{M=1} KL(Bern(q) ‖ Bern(p₀)). ``ActiveBernoulli`` (CigL's q(Z) under a mask): Bernoulli(p₀) on M.
* ``MaskedWeight`` (q(W | Z)): δ(U) or N(U, σ²) at kept, δ(0) or N(0, σ²) at dropped, exactly 0 at pruned.
* The engine: the Z Pyro draws follows p(Z) (CigL) or q(Z) (vcigl), and the method's step
  restriction sees exactly the active positions with Z = 0.
* vcigl: config, learning of the keep probabilities, and the exact keep-logit gradient.
* Stock Pyro: Trace_ELBO with vectorised particles, Predictive(parallel=True), flat prior, two
  models in one process, a stock pyro.optim.SGD for structure updates, the Gaussian likelihood.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Bernoulli, Normal, kl_divergence

import models
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.likelihoods import GaussianRegressor
from bayessparse.methods import build_method
from bayessparse.ppl.distributions import ActiveBernoulli, BernoulliMask, IsotropicNormal, KeepMask, MaskedWeight
from bayessparse.ppl.elbo import CancellingTrace_ELBO
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.ppl.svi import DenseGradients, LatentCapture
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet
from bayessparse.train import build_run, load_data, train_step

SHAPE = (40, 30)
P0 = 0.8  # the prior keep probability of the unit tests (far from the q's used, so a swap shows)
MNIST1D = {"data": "mnist1d", "model": "mlp", "batch_size": 32, "lr": 0.05, "epochs": 1, "device": "cpu",
           "engine": "pyro", "sparsity": 0.8, "update_interval": 1000}


def _tol(p, n, sigmas=5.0):
    """``sigmas`` binomial standard errors of a frequency over ``n`` Bernoulli(p) draws."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def _active(seed=0, density=0.4, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).float()


def _logit(p):
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------- KeepMask: q(Z)


def test_keep_mask_draws_follow_q_on_active_and_are_fixed_on_pruned():
    # Catches: q's logit ignored / negated in rsample (active frequency ≠ 0.3); `active` dropped from
    # KeepMask.rsample (pruned positions then follow q: frequency 0.3 instead of the point mass at 1).
    torch.manual_seed(0)
    m = _active()
    q = KeepMask(torch.tensor(_logit(0.3)), 0.1, P0, m, SHAPE)
    s = q.rsample((300,)).detach()
    assert s.shape == (300, *SHAPE)
    assert torch.all((s == 0) | (s == 1))  # hard values, exactly 0 / 1
    on, off = s[:, m.bool()], s[:, ~m.bool()]
    assert on.mean().item() == pytest.approx(0.3, abs=_tol(0.3, on.numel()))
    # pruned: a parameter-free point mass at 1 (Z multiplies a zero weight there)
    assert torch.all(off == 1)
    # no M: every position follows q
    dense = KeepMask(torch.tensor(_logit(0.3)), 0.1, P0, None, SHAPE).sample((50,))
    assert dense.mean().item() == pytest.approx(0.3, abs=_tol(0.3, dense.numel()))
    # batch dimensions (vectorised particles)
    batched = q.expand((3, 1))
    assert batched.rsample().shape == (3, 1, *SHAPE) and batched.log_prob(batched.rsample()).shape == (3, 1)


def test_active_bernoulli_is_the_prior_on_the_active_positions():
    # CigL's q(Z) under a mask. Catches: a wrong keep probability, draws on the wrong positions, and a KL
    # that is not E_q[log q - log p] against the model's p(Z) = Bernoulli(p₀).
    torch.manual_seed(0)
    m = _active()
    index = m.reshape(-1).nonzero().squeeze(1)
    q = ActiveBernoulli(P0, index, SHAPE)
    s = q.sample((300,))
    assert s.shape == (300, *SHAPE) and torch.all((s == 0) | (s == 1))
    on = s[:, m.bool()]
    assert on.mean().item() == pytest.approx(P0, abs=_tol(P0, on.numel()))
    assert torch.all(s[:, ~m.bool()] == 1)
    p = BernoulliMask(P0, SHAPE)
    kl = kl_divergence(q, p)
    log_ratio = q.log_prob(s) - p.log_prob(s)
    se = log_ratio.std().item() / math.sqrt(len(log_ratio))
    assert log_ratio.mean().item() == pytest.approx(kl.item(), abs=5 * se + 1e-3)
    assert q.expand((3, 1)).sample().shape == (3, 1, *SHAPE)


def _keep_kl_active_part(q, p):
    """KL(q ‖ p) minus its parameter-free part (the same factor with q = p₀ on the active positions)."""
    at_prior = KeepMask(torch.full_like(q.logits, _logit(q.prior_probs)), q.temperature, q.prior_probs, q.active,
                        q.event_shape)
    return kl_divergence(q, p) - kl_divergence(at_prior, p)


def test_keep_mask_per_unit_logits():
    # Catches: per-unit logits broadcast along the wrong axis, or the active counts of the KL taken per
    # layer instead of per unit (or over all positions: `active` ignored in _active_counts).
    torch.manual_seed(1)
    m = _active(density=0.5)
    probs = torch.linspace(0.1, 0.9, SHAPE[0]).unsqueeze(1)  # (out, 1): one keep probability per output unit
    q = KeepMask(torch.logit(probs), 0.1, P0, m, SHAPE)
    s = q.sample((400,))
    freq = (s * m).sum(0).sum(1) / (400 * m.sum(1))
    counts = m.sum(1)
    tol = 5 * torch.sqrt(probs.squeeze(1) * (1 - probs.squeeze(1)) / (400 * counts))
    assert torch.all((freq - probs.squeeze(1)).abs() < tol), (freq, probs.squeeze(1))
    per_unit = kl_divergence(Bernoulli(probs.squeeze(1)), Bernoulli(torch.tensor(P0)))
    expected = (counts * per_unit).sum()
    torch.testing.assert_close(_keep_kl_active_part(q, BernoulliMask(P0, SHAPE)), expected)
    assert not torch.allclose(expected, m.sum() * per_unit.mean())  # the per-unit weighting matters here


def test_keep_mask_straight_through_gradient_reaches_the_logits():
    # Catches: no straight-through term (z = hard: no gradient at all), or gradient leaking from the
    # pruned positions (a parameter-free factor).
    m = _active()
    tau = 0.5
    logit = torch.tensor(_logit(0.4), requires_grad=True)
    c = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    z = KeepMask(logit, tau, P0, m, SHAPE).rsample()
    (z * c).sum().backward()
    assert torch.isfinite(logit.grad) and logit.grad != 0
    # exactly the Concrete gradient of the soft sample at the active positions (same uniforms)
    torch.manual_seed(7)
    eps = torch.finfo(torch.float32).tiny
    u = torch.rand(SHAPE).clamp(eps, 1 - eps)
    soft = torch.sigmoid((_logit(0.4) + torch.log(u) - torch.log1p(-u)) / tau)
    expected = (c * m * soft * (1 - soft) / tau).sum()
    torch.testing.assert_close(logit.grad, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(z.detach(), torch.where(m.bool(), (soft > 0.5).float(), z.detach()))
    # the pruned positions carry no gradient
    logit.grad = None
    KeepMask(logit, tau, P0, m, SHAPE).rsample().mul(c * (1 - m)).sum().backward()
    assert logit.grad is None or logit.grad == 0


def test_keep_mask_kl_counts_active_positions_and_is_the_mc_divergence():
    # Catches: `active` dropped from the KL counts (Σ over all positions), a wrong p₀ in the KL,
    # and `active` dropped from KeepMask.log_prob (the MC average of log q - log p then differs).
    torch.manual_seed(0)
    m = _active()
    logit = torch.tensor(_logit(0.3), requires_grad=True)
    q = KeepMask(logit, 0.1, P0, m, SHAPE)
    p = BernoulliMask(P0, SHAPE)
    kl = kl_divergence(q, p)
    reference = m.sum() * kl_divergence(Bernoulli(logits=logit), Bernoulli(torch.tensor(P0)))
    # θ enters through the active positions only: Σ_{M=1} KL(Bern(q) ‖ Bern(p₀)) (+ a parameter-free part)
    torch.testing.assert_close(_keep_kl_active_part(q, p), reference)
    (grad,) = torch.autograd.grad(kl, logit)
    (expected_grad,) = torch.autograd.grad(reference, logit)
    torch.testing.assert_close(grad, expected_grad)
    with torch.no_grad():
        s = q.sample((400,))
        log_ratio = q.log_prob(s) - p.log_prob(s)
    se = log_ratio.std().item() / math.sqrt(len(log_ratio))
    assert log_ratio.mean().item() == pytest.approx(kl.item(), abs=5 * se)
    # with q = p₀ on the active positions nothing depends on θ, and only against its own prior is it closed-form
    assert _keep_kl_active_part(KeepMask(torch.tensor(_logit(P0)), 0.1, P0, m, SHAPE), p).abs().item() < 1e-3
    with pytest.raises(NotImplementedError):
        kl_divergence(q, BernoulliMask(0.5, SHAPE))


# ---------------------------------------------------------------------------------- MaskedWeight: q(W | Z)


def _masked_weight_parts(seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(SHAPE, generator=g)
    m = (torch.rand(SHAPE, generator=g) < 0.5).float()
    z = (torch.rand(SHAPE, generator=g) < 0.6).float()
    sigma = 0.1 + 0.2 * torch.rand(SHAPE, generator=g)
    return u, m, z, sigma


def test_masked_weight_point_mass_samples():
    # Catches: the mask ignored (pruned positions not exactly 0: mutation `self.active` -> None in
    # MaskedWeight), Z ignored (dropped positions = U instead of 0).
    u, m, z, _ = _masked_weight_parts()
    kept, inactive = (z * m).bool(), (1 - z * m).bool()
    q = MaskedWeight(u, z, m)
    s = q.sample((5,))
    assert s.shape == (5, *SHAPE)
    assert torch.equal(s[:, kept], u[kept].expand(5, -1))  # δ(U) at kept
    assert torch.all(s[:, inactive] == 0)  # δ(0) at dropped and pruned
    torch.testing.assert_close(q.mean, u * z * m)  # E[W | Z] = Z ⊙ M ⊙ U
    assert torch.equal(MaskedWeight(u, None, m).sample(), u * m)  # no Z: M ⊙ U
    assert torch.equal(MaskedWeight(u).sample(), u)  # dense, no Z: U


def test_masked_weight_gaussian_samples_have_the_learned_scale():
    # Catches: σ not applied (or applied at pruned positions), the mask ignored, the dropped component
    # not centred at 0 (e.g. centred at U).
    u, m, z, sigma = _masked_weight_parts(1)
    kept, dropped, pruned = (z * m).bool(), ((1 - z) * m).bool(), (1 - m).bool()
    torch.manual_seed(0)
    s = MaskedWeight(u, z, m, sigma).sample((400,))
    assert torch.all(s[:, pruned] == 0)
    for where, centre in ((kept, u), (dropped, torch.zeros(SHAPE))):  # N(U, σ²) kept, N(0, σ²) dropped
        standardised = ((s - centre) / sigma)[:, where]
        assert standardised.mean().item() == pytest.approx(0.0, abs=5 / math.sqrt(standardised.numel()))
        assert standardised.std().item() == pytest.approx(1.0, rel=0.02)
    torch.testing.assert_close(s.std(0)[m.bool()], sigma[m.bool()], rtol=0.25, atol=0)  # per position: its σ


def test_masked_weight_kl_is_the_mc_divergence_and_the_gaussian_formula():
    # Catches: the mask / Z ignored in the KL (sums over the wrong coordinates), a wrong Gaussian KL
    # (e.g. the -1/2 dropped), the pruned positions' -log p(0) missing.
    u, m, z, sigma = _masked_weight_parts(2)
    kept, dropped, pruned = z * m, (1 - z) * m, 1 - m
    sp = 0.7
    p = IsotropicNormal(sp, SHAPE)
    prior = Normal(0.0, sp)
    minus_log_p0 = -prior.log_prob(torch.zeros(SHAPE))
    # the point mass: -log p(value) = -log p(U) at kept, -log p(0) elsewhere; MC = closed form (no noise)
    q = MaskedWeight(u, z, m)
    kl = kl_divergence(q, p)
    expected = -(prior.log_prob(u) * kept).sum() + (minus_log_p0 * (dropped + pruned)).sum()
    torch.testing.assert_close(kl, expected)
    s = q.sample((3,))
    torch.testing.assert_close(q.log_prob(s) - p.log_prob(s), kl.expand(3), rtol=1e-5, atol=1e-3)
    # the Gaussian: KL(N(U, σ²) ‖ N(0, σ_p²)) at kept, KL(N(0, σ²) ‖ N(0, σ_p²)) at dropped,
    # -log p(0) at pruned
    q = MaskedWeight(u, z, m, sigma)
    kl = kl_divergence(q, p)
    expected = ((kl_divergence(Normal(u, sigma), prior) * kept).sum()
                + (kl_divergence(Normal(torch.zeros(SHAPE), sigma), prior) * dropped).sum()
                + (minus_log_p0 * pruned).sum())
    torch.testing.assert_close(kl, expected)
    torch.manual_seed(0)
    with torch.no_grad():
        s = q.sample((400,))
        log_ratio = q.log_prob(s) - p.log_prob(s)
    se = log_ratio.std().item() / math.sqrt(len(log_ratio))
    assert log_ratio.mean().item() == pytest.approx(kl.item(), abs=5 * se)
    # batched Z (vectorised particles): one divergence per draw
    zs = (torch.rand(3, 1, *SHAPE, generator=torch.Generator().manual_seed(4)) < 0.6).float()
    batched = kl_divergence(MaskedWeight(u, zs, m, sigma), p.expand((3, 1)))
    assert batched.shape == (3, 1)
    torch.testing.assert_close(batched[1, 0], kl_divergence(MaskedWeight(u, zs[1, 0], m, sigma), p))


def test_masked_weight_pruned_coordinates_get_no_gradient():
    # Catches: the mask ignored (pruned means / scales would learn), Z ignored for the means (dropped
    # means would feel the likelihood or the divergence).
    u0, m, z, sigma0 = _masked_weight_parts(3)
    u, sigma = u0.clone().requires_grad_(True), sigma0.clone().requires_grad_(True)
    q = MaskedWeight(u, z, m, sigma)
    c = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    ((q.rsample() * c).sum() + kl_divergence(q, IsotropicNormal(0.5, SHAPE))).backward()
    kept, pruned = (z * m).bool(), (1 - m).bool()
    assert torch.all(u.grad[~kept] == 0) and torch.all(u.grad[kept] != 0)  # means: kept only
    assert torch.all(sigma.grad[pruned] == 0) and torch.all(sigma.grad[~pruned] != 0)  # widths: active ones


# ---------------------------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def mnist1d():
    return load_data(resolve(MNIST1D, {"method": "rigl"}))


def _stream(run, seed=0, batch=32):
    x, y = run.data.train.tensors
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(y), (batch,), generator=g)
        yield x[idx], y[idx]


def test_engine_draws_z_from_the_prior_and_restricts_the_step_to_it(mnist1d):
    # Catches: a wrong p₀ of the random mask, in the model's p(Z) (BernoulliMask(0.5, ...) instead of
    # keep_prob: q(Z) = p(Z) on a dense layer, whose keep frequency is then 0.5) or in the guide's q(Z) on
    # the sparse layers (ActiveBernoulli(0.5, ...)); and a broken hand-over of Pyro's Z to the RandomMask
    # (LatentCapture / use_draw: the dropped indices, hence the restricted step, would not match the draw).
    run = build_run(resolve(MNIST1D, {"method": "cigl", "drop_rate": 0.2}), mnist1d)
    names = [z_site(n) for n in run.engine.model.weight_names]
    weights = list(prunable_weights(run.model).values())
    masks = list(run.method.masks.masks.values())
    kept = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    stream = _stream(run)
    for _ in range(8):
        assert not run.method.wants_update(run.step)
        before = [w.detach().clone() for w in weights]
        with LatentCapture(names) as capture:
            train_step(run, *next(stream))
        for name, w, old, m, dropped in zip(names, weights, before, masks, run.method.random_mask.dropped):
            z = capture.values[name]
            assert torch.all((z == 0) | (z == 1))
            active = m.bool()
            kept[name] += int(z[active].sum())
            total[name] += int(active.sum())
            # the method's dropped entries are exactly the active positions where Pyro's Z is 0
            expected = ((z == 0) & active).reshape(-1).nonzero().squeeze(1)
            assert torch.equal(dropped.sort().values, expected), name
            # CigL's restricted step: dropped means keep their values, kept means move, pruned stay 0
            flat, flat_old = w.detach().reshape(-1), old.reshape(-1)
            assert torch.equal(flat[dropped], flat_old[dropped]), name
            assert not torch.equal(w.detach()[(z == 1) & active], old[(z == 1) & active]), name
            assert torch.all(w.detach()[~active] == 0), name
    assert run.method.masks.dense  # a dense layer (q(Z) = p(Z) itself) and sparse ones (q(Z) = p(Z) on M)
    for name in names:  # p(Z) = Bernoulli(1 - drop_rate) on the active positions of every layer
        assert kept[name] / total[name] == pytest.approx(0.8, abs=_tol(0.8, total[name])), name


def test_vcigl_config_defaults_to_the_pyro_engine():
    cfg = resolve({"method": "vcigl"})
    assert cfg.engine == "pyro"
    assert resolve({"method": "cigl"}).engine == "plain"
    with pytest.raises(ConfigError):
        resolve({"method": "vcigl", "engine": "plain"})
    for bad in ({"guide": "laplace"}, {"keep_prior": 1.0}, {"keep_init": 0.0}, {"keep_shape": "weight"},
                {"keep_temperature": 0.0}):
        with pytest.raises(ConfigError):
            resolve({"method": "vcigl", **bad})


def test_vcigl_learns_the_keep_probabilities_and_draws_z_from_q(mnist1d):
    # Catches: the guide's q(Z) not used by the engine (Z drawn with p₀ = 0.5 instead of q = 0.99 on the
    # active positions), `active` dropped in KeepMask (pruned positions then follow q, not fixed at 1), and
    # keep logits that never receive a gradient / an optimizer step.
    run = build_run(resolve(MNIST1D, {"method": "vcigl", "keep_init": 0.99, "keep_prior": 0.5}), mnist1d)
    guide = run.engine.guide
    names = run.engine.model.weight_names
    assert guide.keep == "learned" and run.engine.model.keep_prob == 0.5
    on = off = n_on = n_off = 0
    on_expected = on_variance = 0.0
    stream = _stream(run, seed=1)
    for _ in range(40):
        with run.engine.scope():
            q = guide.keep_probabilities()  # q(Z) of this step
        with LatentCapture([z_site(n) for n in names]) as capture:
            train_step(run, *next(stream))
        for name in names:
            z, m = capture.values[z_site(name)].detach(), run.method.masks.masks[name].bool()
            on, n_on = on + z[m].sum().item(), n_on + m.sum().item()
            on_expected += q[name].item() * m.sum().item()
            on_variance += q[name].item() * (1 - q[name].item()) * m.sum().item()
            off, n_off = off + z[~m].sum().item(), n_off + (~m).sum().item()
    with run.engine.scope():
        keep = guide.keep_probabilities()
        expected = guide.expected_weights()
    # the draws: q on the active positions, the point mass at 1 on the pruned ones
    assert abs(on - on_expected) < 5 * math.sqrt(on_variance), (on / n_on, on_expected / n_on)
    assert n_off > 0 and off == n_off
    moved = {n: 0.99 - keep[n].item() for n in names}
    assert all(abs(v) > 2e-3 for v in moved.values()), moved  # measured: 0.006-0.016 after 40 steps
    assert max(moved.values()) > 5e-3
    for name, w in prunable_weights(run.model).items():  # E_q[Z ⊙ W] = sigmoid(θ)·M⊙U
        torch.testing.assert_close(expected[name], keep[name] * run.method.masks.masks[name] * w.detach())
    assert set(run.engine.state_dict()) == {f"net.keep_prob.{n.rsplit('.', 1)[0]}" for n in names}


@pytest.mark.parametrize("keep_shape", ["layer", "unit"])
def test_vcigl_keep_logit_gradient_is_the_kl_derivative(mnist1d, keep_shape):
    """Without likelihood and with the flat prior the ELBO's only θ term is -(1/N)·KL(q(Z) ‖ p(Z)):

    ∂loss/∂θ = (count/N)·q(1-q)·[log(q/p₀) - log((1-q)/(1-p₀))], count = active positions θ governs,

    times ∂θ/∂u for the stored unconstrained parameter u (q = floor + (1 - floor)·sigmoid(u), θ = logit q).
    """
    # Catches: a wrong p₀ in the guide's / model's Z factors (the engine's keep_prior not reaching them),
    # `active` dropped from the KL counts, per-unit counts taken per layer, the 1/N scale missing.
    p0, q0 = 0.3, 0.9
    cfg = resolve(MNIST1D, {"method": "vcigl", "weight_decay": 0.0, "keep_prior": p0, "keep_init": q0,
                            "keep_shape": keep_shape})
    run = build_run(cfg, mnist1d)
    model, guide, n = run.engine.model, run.engine.guide, len(mnist1d.train)
    x, y = next(_stream(run))
    with run.engine.scope():
        CancellingTrace_ELBO().loss_and_grads(poutine.block(model, hide=["obs"]), guide, x, y)
        store = pyro.get_param_store()
        for name in model.weight_names:
            theta = store._params[model.param_name(f"keep_prob.{name.rsplit('.', 1)[0]}")]
            m = run.method.masks.masks[name]
            count = m.sum() if keep_shape == "layer" else m.sum(1, keepdim=True)
            assert theta.shape == (() if keep_shape == "layer" else (m.shape[0], 1))
            dkl_dq = math.log(q0 / p0) - math.log((1 - q0) / (1 - p0))
            floor = guide.keep_floor
            s_u = (q0 - floor) / (1 - floor)
            dtheta_du = (1 - floor) * s_u * (1 - s_u) / (q0 * (1 - q0))
            expected = (count / n * q0 * (1 - q0) * dkl_dq * dtheta_du).expand(theta.shape)
            torch.testing.assert_close(theta.grad, expected, rtol=1e-4, atol=0)
            theta.grad = None


# ------------------------------------------------------------------------------------------- stock Pyro


def _small(keep_prob=0.7, wd=1e-3, seed=0, **guide_kwargs):
    torch.manual_seed(seed)
    net = models.build("mlp", 3, (12,), width=0.25)
    masks = MaskSet(net, {n: 0.4 for n in prunable_weights(net)}, torch.Generator().manual_seed(seed))
    model = SparseNetModel(net, 500, wd, keep_prob=keep_prob)
    guide = SparseGuide(model, masks, **guide_kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(16, 12, generator=g), torch.randint(3, (16,), generator=g)
    return net, masks, model, guide, x, y


FAMILIES = [("map", "prior"), ("map", "learned"), ("gaussian", "prior"), ("gaussian", "learned")]


@pytest.mark.parametrize("family,keep", FAMILIES)
@pytest.mark.parametrize("elbo_class", [pyro.infer.Trace_ELBO, CancellingTrace_ELBO])
def test_vectorised_particles(elbo_class, family, keep):
    net, masks, model, guide, x, y = _small(family=family, keep=keep, keep_init=0.9)
    elbo = elbo_class(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    with pyro.get_param_store().scope(), pyro.validation_enabled(True):
        loss = elbo.loss_and_grads(model, guide, x, y)
        store = pyro.get_param_store()
        grads = {k: store._params[k].grad for k in store.keys()}
    assert math.isfinite(loss) and loss > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    for name, w in prunable_weights(net).items():
        assert w.grad[masks.masks[name] == 1].abs().sum() > 0 and torch.all(w.grad[masks.masks[name] == 0] == 0)
    if keep == "learned":
        assert any(k.startswith(f"{model.name}.keep_prob.") and g.abs().sum() > 0 for k, g in grads.items())


@pytest.mark.parametrize("family,keep", FAMILIES)
def test_predictive_parallel(family, keep):
    net, masks, model, guide, x, y = _small(family=family, keep=keep, keep_init=0.9)
    with pyro.get_param_store().scope():
        out = pyro.infer.Predictive(model, guide=guide, num_samples=4, parallel=True)(x)
        sequential = pyro.infer.Predictive(model, guide=guide, num_samples=4)(x)
    assert out["obs"].shape == sequential["obs"].shape == (4, len(x))
    assert out["obs"].min() >= 0 and out["obs"].max() < 3


def test_flat_prior_model_with_predictive():
    net, masks, model, guide, x, y = _small(wd=0.0)
    assert model.scale is None
    with pyro.get_param_store().scope():
        for parallel in (False, True):
            out = pyro.infer.Predictive(model, guide=guide, num_samples=4, parallel=parallel)(x)
            assert out["obs"].shape == (4, len(x)), parallel
        loss = CancellingTrace_ELBO().loss(model, guide, x, y)
    assert math.isfinite(loss)


def test_two_models_do_not_share_parameters():
    _, _, a, guide_a, x, y = _small(seed=0)
    _, _, b, guide_b, _, _ = _small(seed=1)
    assert a.name != b.name
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(a, guide_a, pyro.optim.SGD({"lr": 0.1}), CancellingTrace_ELBO())
        svi.step(x, y)
        pyro.infer.SVI(b, guide_b, pyro.optim.SGD({"lr": 0.1}), CancellingTrace_ELBO()).step(x, y)
        store = pyro.get_param_store()
        keys_a = {k for k in store.keys() if k.startswith(a.name + ".")}
        keys_b = {k for k in store.keys() if k.startswith(b.name + ".")}
        assert keys_a and keys_b and not keys_a & keys_b and keys_a | keys_b == set(store.keys())
        assert {store[k] for k in keys_a}.isdisjoint({store[k] for k in keys_b})
        frozen = {k: store[k].detach().clone() for k in keys_b}
        for _ in range(3):
            svi.step(x, y)
        assert all(torch.equal(store[k], v) for k, v in frozen.items())  # training a leaves b alone
        for model in (a, b):  # each model's params are its own network's tensors
            assert all(store[model.param_name(n)] is p for n, p in model.network.named_parameters())


@pytest.mark.parametrize("family", ["map", "gaussian"])
def test_update_structure_with_a_stock_pyro_optimizer(family):
    """The old code crashed here with "'PyroOptim' object has no attribute 'state'"."""
    torch.manual_seed(0)
    net = models.build("mlp", 3, (12,), width=0.25)
    cfg = resolve({"method": "rigl", "sparsity": 0.8, "update_interval": 5, "update_alpha": 0.3})
    method = build_method(cfg, net, torch.Generator().manual_seed(0))
    optim = pyro.optim.SGD({"lr": 0.1, "momentum": 0.9})
    method.setup(net, optim, 100, 10)
    model = SparseNetModel(net, 500, 1e-3, keep_prob=0.7)
    guide = SparseGuide(model, method.masks, family=family, init_scale=1e-3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 12, generator=g), torch.randint(3, (16,), generator=g)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(model, guide, optim, CancellingTrace_ELBO())
        for _ in range(5):
            svi.step(x, y)
        store = pyro.get_param_store()
        scales = {}
        if family == "gaussian":
            scales = {n: store._params[model.param_name(f"scale.{n}")] for n in model.weight_names}
        tracked = list(prunable_weights(net).items()) + [(f"scale.{n}", s) for n, s in scales.items()]
        buffers = {n: optim.optim_objs[p].state[p]["momentum_buffer"].clone() for n, p in tracked}
        old = {n: m.clone() for n, m in method.masks.masks.items()}
        old_means = {n: w.detach().clone() for n, w in prunable_weights(net).items()}
        dense = DenseGradients()
        with dense:
            svi.loss_and_grads(model, guide, x, y)
        assert method.wants_update(5)
        guide.update_structure(method, 5, dense.grads, optim)
        changed_any = False
        for name, w in prunable_weights(net).items():
            changed = method.masks.masks[name] != old[name]
            if not changed.any():
                continue
            changed_any = True
            # positions dropped and grown again in the same update are re-initialised too (U = 0)
            regrown = (old[name] == 1) & ~changed & (w.detach() == 0) & (old_means[name] != 0)
            for key, p in [(name, w)] + ([(f"scale.{name}", scales[name])] if scales else []):
                after = optim.optim_objs[p].state[p]["momentum_buffer"]
                assert buffers[key][changed].abs().sum() > 0, key  # there was momentum to zero ...
                assert torch.all(after[changed] == 0), key  # ... and it was zeroed where M changed
                untouched = ~changed & ~regrown
                torch.testing.assert_close(after[untouched], buffers[key][untouched])
            if scales:  # σ restarts at init_scale where M changed
                torch.testing.assert_close(store[model.param_name(f"scale.{name}")][changed],
                                           torch.full((int(changed.sum()),), 1e-3))
        assert changed_any
        assert math.isfinite(svi.step(x, y))


def test_gaussian_likelihood_learns_its_noise_scale():
    torch.manual_seed(0)
    net = models.build("mlp", 1, (3,), width=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(256, generator=g)
    model = SparseNetModel(GaussianRegressor(net), len(x), 1e-4, likelihood="gaussian", name="regression")
    guide = SparseGuide(model)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), CancellingTrace_ELBO())
        losses = [svi.step(x, y) for _ in range(300)]
        noise = pyro.param("regression.log_noise").exp().item()
        assert model.network.noise_scale.item() == pytest.approx(noise)  # the store holds the network's own tensor
        trace = poutine.trace(model).get_trace(x, y)
    assert isinstance(trace.nodes["obs"]["fn"], pyro.distributions.Normal)
    assert trace.nodes["obs"]["fn"].batch_shape == (len(x),)
    assert losses[-1] < losses[0] - 0.5
    assert noise < 0.5  # from 1.0 toward the data's 0.1 (and the fit's residual)


def test_gaussian_likelihood_needs_a_network_that_holds_the_noise():
    with pytest.raises(ValueError, match="GaussianRegressor"):
        SparseNetModel(models.build("mlp", 1, (3,), width=0.05), 10, likelihood="gaussian")


def test_jit_trace_elbo_gives_trace_elbos_loss():
    """``JitTrace_ELBO`` traces the model (the network runs with substituted parameter slots, which
    ``torch.jit.trace`` accepts, unlike ``torch.func.functional_call``) and computes Trace_ELBO's loss."""
    import warnings

    net, masks, model, guide, x, y = _small(keep_prob=1.0)
    with pyro.get_param_store().scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        expected = pyro.infer.Trace_ELBO().loss(model, guide, x, y)
        jit = pyro.infer.JitTrace_ELBO()
        losses = [jit.loss_and_grads(model, guide, x, y) for _ in range(2)]  # traced, then replayed
    assert losses[0] == pytest.approx(expected, rel=1e-6) and losses[1] == pytest.approx(expected, rel=1e-6)
    for name, w in prunable_weights(net).items():
        assert w.grad is not None and torch.all(w.grad[masks.masks[name] == 0] == 0)


def test_guide_options_rebuild_the_same_family():
    """``SparseGuide.options()`` carries every setting, so a rebuilt guide (a saved run's predictive) is the same
    family: a setting left out would silently fall back to its default."""
    net, masks, model, guide, x, y = _small(family="gaussian", keep="learned", keep_shape="unit", temperature=0.3,
                                            keep_init=0.8, keep_floor=0.6, init_scale=0.02)
    rebuilt = SparseGuide(model, masks, **guide.options())
    assert rebuilt.options() == guide.options()
    assert guide.options()["keep_floor"] == 0.6 and guide.options()["init_scale"] == 0.02
