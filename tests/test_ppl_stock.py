"""Stock Pyro on the sparse model: the SVI example, the ``SparseBNN`` facade, the AutoGuide path."""

import importlib.util
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal

import models
from bayessparse.data import load
from bayessparse.ppl import SparseGuide, SparseNetModel, predictive
from bayessparse.ppl.autoguide import MaskedAutoGuide
from bayessparse.ppl.bnn import SparseBNN, structured_step
from bayessparse.sparsity.growth import GradientGrow
from bayessparse.sparsity.training import SparseTraining
from bayessparse.uncertainty import accuracy

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "stock_svi.py"


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("stock_svi", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wine():
    return load("wine")


def _net(classes, features):
    torch.manual_seed(0)
    return models.build("mlp", classes, (features,), width=0.25)


# ---------------------------------------------------------------- the stock SVI example

def test_stock_svi_example_vcigl_learns_keep_probabilities_and_moves_the_structure(example):
    out = example.main(["--steps", "120", "--samples", "4", "--n-data", "1000", "--interval", "10", "--seed", "0"])
    assert math.isfinite(out["loss_first"]) and out["loss_last"] < out["loss_first"] - 0.5
    assert out["accuracy"] > 0.2  # chance: 0.1
    assert math.isfinite(out["nll"]) and out["nll"] < math.log(10)
    assert 0.0 <= out["ece"] < 0.3
    assert set(out["keep_start"]) == {"features.1.weight", "features.3.weight", "classifier.weight"}
    for layer, start in out["keep_start"].items():
        assert start == pytest.approx(0.95)  # keep_init (the prior's p0 is 0.99)
        end = out["keep_end"][layer]
        assert abs(math.log(end / (1 - end)) - math.log(start / (1 - start))) > 0.1, layer  # q(Z) was learned
    assert out["mask_density"] == pytest.approx(out["target_density"], abs=1e-3)
    assert out["positions_changed"] > 0 and out["masks_moved"] > 0


def test_stock_svi_example_rigl_has_no_random_mask(example):
    out = example.main(["--steps", "60", "--samples", "2", "--n-data", "1000", "--interval", "10",
                        "--variant", "rigl", "--sparsity", "0.8"])
    assert out["keep_start"] == out["keep_end"] == {k: 1.0 for k in out["keep_start"]}
    assert out["mask_density"] == pytest.approx(0.2, abs=1e-3) and out["masks_moved"] > 0
    assert out["loss_last"] < out["loss_first"]


# ---------------------------------------------------------------- SparseBNN

def test_sparse_bnn_classification_fit_predict_evaluate(wine):
    bnn = SparseBNN(_net(3, 13), sparsity=0.8, keep="learned", drop_rate=0.2, interval=5)
    history = bnn.fit(wine.train, epochs=25, lr=1e-2, batch_size=32)
    assert len(history) == 25 and all(map(math.isfinite, history)) and history[-1] < history[0] - 1.0
    assert bnn.updates and sum(u["changed"] for u in bnn.updates) > 0
    assert bnn.masks.mask_density() == pytest.approx(0.2, abs=1e-3)
    for name, w in bnn.masks.weights.items():  # pruned means are exactly 0
        assert not w[bnn.masks.masks[name] == 0].any(), name
    x, y = wine.test.tensors
    probs = bnn.predict(x, num_samples=8)
    assert probs.shape == (len(y), 3) and torch.allclose(probs.sum(-1), torch.ones(len(y)), atol=1e-5)
    draws = bnn.predict(x, num_samples=8, aggregate=False)
    assert draws.shape == (8, len(y), 3) and not torch.allclose(draws[0], draws[1])  # Z varies
    metrics = bnn.evaluate(wine.test, num_samples=8)
    assert set(metrics) == {"accuracy", "nll", "ece", "brier"}
    assert metrics["accuracy"] > 0.8 and metrics["nll"] < 0.5 and metrics["brier"] < 0.3  # chance: 0.4, 1.1, 0.67
    with pyro.get_param_store().scope(bnn.store):
        keep = bnn.guide.keep_probabilities()
    moved = [abs(float(p) - 0.8) for p in keep.values()]  # keep_init = p0 = 0.8, then learned
    assert all(m > 1e-5 for m in moved) and max(moved) > 1e-3, moved
    assert len(pyro.get_param_store()) == 0  # the BNN's parameters live in its own store


def test_sparse_bnn_regression_on_diabetes():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_diabetes(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:350], perm[350:]
    bnn = SparseBNN(_net(1, 10), sparsity=0.8, likelihood="gaussian", guide="gaussian", weight_decay=1e-2,
                    interval=10)
    history = bnn.fit((x[train], y[train]), epochs=30, lr=1e-2, batch_size=32)
    assert history[-1] < history[0]
    metrics = bnn.evaluate((x[test], y[test]), num_samples=8)
    assert set(metrics) == {"rmse", "nll"}
    mu, sd = y[train].mean(), y[train].std()  # the baseline: N(train mean, train std) for every input
    assert metrics["rmse"] < 0.85 * float((y[test] - mu).pow(2).mean().sqrt())
    assert metrics["nll"] < float(-torch.distributions.Normal(mu, sd).log_prob(y[test]).mean()) - 0.1
    mean, std = bnn.predict(x[test], num_samples=8)
    assert mean.shape == std.shape == (len(test),)
    assert (std >= bnn.noise() - 1e-6).all() and 0.3 < float(bnn.noise()) < 1.0
    assert bnn.predict(x[test], num_samples=8, aggregate=False).shape == (8, len(test))


def test_structured_step_with_a_stock_clipped_adam_restarts_changed_positions(wine):
    net = _net(3, 13)
    method = SparseTraining("rigl", 0.8, "erk", torch.Generator().manual_seed(0), grow=GradientGrow(), interval=5)
    method.setup(net, None, 100, 4)
    model = SparseNetModel(net, len(wine.train), 5e-4, keep_prob=0.8)
    guide = SparseGuide(model, method.masks, family="gaussian", keep="learned")
    optim = pyro.optim.ClippedAdam({"lr": 1e-2})
    svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
    x, y = wine.train.tensors
    assert all(structured_step(svi, guide, method, t, x, y)[1] is None for t in range(5))
    before = {n: m.clone() for n, m in method.masks.masks.items()}
    loss, stats = structured_step(svi, guide, method, 5, x, y)  # an update step: M moves, no optimizer step
    assert math.isfinite(loss) and stats["changed"] > 0
    store = pyro.get_param_store()
    assert all(p.grad is None for _, p in store.named_parameters())
    assert method.masks.sparse_layers()
    for name in method.masks.sparse_layers():
        w, changed = method.masks.weights[name], method.masks.masks[name] != before[name]
        state = optim.optim_objs[w].state[w]
        assert changed.any() and state["exp_avg"][changed].eq(0).all() and state["exp_avg_sq"][changed].eq(0).all()
        assert state["exp_avg"][~changed & (before[name] == 1)].ne(0).any()  # untouched elsewhere
        assert w[changed].eq(0).all()  # grown weights start at 0, dropped ones are pruned
        assert torch.allclose(store[model.param_name(f"scale.{name}")].detach()[changed], torch.tensor(1e-3))


@pytest.mark.parametrize("kwargs, field", [
    ({"sparsity": 1.0}, "sparsity"), ({"likelihood": "poisson"}, "likelihood"), ({"guide": "flow"}, "guide"),
    ({"keep": "learned"}, "drop_rate"), ({"method": "prune"}, "method"), ({"drop_rate": -0.1}, "drop_rate"),
    ({"num_data": 0}, "num_data"), ({"weight_decay": -1.0}, "weight_decay"), ({"interval": 0}, "interval"),
])
def test_sparse_bnn_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SparseBNN(_net(3, 13), **kwargs)


def test_sparse_bnn_fit_and_predict_argument_errors(wine):
    bnn = SparseBNN(_net(3, 13))
    with pytest.raises(RuntimeError, match="call fit"):
        bnn.predict(wine.test.tensors[0])
    with pytest.raises(ValueError, match="^data must be"):
        bnn.fit([1, 2, 3], epochs=1)
    with pytest.raises(ValueError, match="^epochs must be"):
        bnn.fit(wine.train, epochs=0)
    with pytest.raises(ValueError, match="^lr must be"):
        bnn.fit(wine.train, epochs=1, lr=0.0)


# ---------------------------------------------------------------- AutoGuides that respect M

def _static(net, sparsity=0.8):
    method = SparseTraining("static", sparsity, "erk", torch.Generator().manual_seed(0))
    method.setup(net, None, 100, 4)
    return method.masks


@pytest.mark.parametrize("autoguide, kwargs, steps", [
    (AutoNormal, {"init_scale": 1e-2}, 60),
    (AutoDelta, {}, 60),
    (AutoLowRankMultivariateNormal, {"init_scale": 1e-2, "rank": 2}, 20),
])
def test_autoguide_draws_are_exactly_sparse_and_train(wine, autoguide, kwargs, steps):
    net = _net(3, 13)
    masks = _static(net)
    model = SparseNetModel(net, len(wine.train), weight_decay=5e-4)
    guide = MaskedAutoGuide(model, masks, autoguide, **kwargs)
    x, y = wine.train.tensors
    svi = pyro.infer.SVI(guide.model, guide, pyro.optim.ClippedAdam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(steps)]
    assert all(map(math.isfinite, losses)) and sum(losses[-5:]) < sum(losses[:5])
    # the guide's parameters cover the active weights only
    nnz = sum(masks.nnz().values())
    own = {k: v for k, v in pyro.get_param_store().items() if ".autoguide." in k}
    locs = [v for k, v in own.items() if (k.endswith("weight_active") and ".scales." not in k) or k.endswith(".loc")]
    latent = sum(v.numel() for v in locs)
    assert latent == nnz < sum(m.numel() for m in masks.masks.values())
    first, second = guide.sample_weights(), guide.sample_weights()
    for name, m in masks.masks.items():
        assert torch.equal(first[name][m == 0], torch.zeros(int((m == 0).sum()))), name  # exactly 0 at M = 0
        assert first[name][m == 1].ne(0).any(), name
        if autoguide is AutoNormal:
            assert not torch.equal(first[name], second[name])  # a distribution, not a point
    probs = predictive(guide.model, guide, wine.test.tensors[0], 4, seed=0)
    assert accuracy(probs, wine.test.tensors[1]) > 0.7


def test_autoguide_scales_like_the_model_and_samples_z_from_the_prior(wine):
    net = _net(3, 13)
    masks = _static(net)
    model = SparseNetModel(net, len(wine.train), weight_decay=5e-4, keep_prob=0.8)
    guide = MaskedAutoGuide(model, masks, AutoNormal, init_scale=1e-2)
    x, y = wine.train.tensors
    trace = poutine.trace(guide).get_trace(x, y)
    n = len(wine.train)
    for name in model.weight_names:
        assert trace.nodes[name + "_active"]["scale"] == pytest.approx(1 / n)
        z = trace.nodes[name.rsplit(".", 1)[0] + ".z"]
        assert z["fn"] is model.z_priors[name] and z["scale"] == pytest.approx(1 / n)
    assert not any(".z" in k for k in pyro.get_param_store().keys())  # Z is hidden from the AutoGuide
    svi = pyro.infer.SVI(guide.model, guide, pyro.optim.ClippedAdam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(40)]
    assert sum(losses[-5:]) < sum(losses[:5])
    model_trace = poutine.trace(poutine.replay(guide.model, trace=poutine.trace(guide).get_trace(x, y))).get_trace(x)
    for name, m in masks.masks.items():  # the network ran with Z ⊙ W: still 0 where M = 0
        w = model_trace.nodes[name]["value"]
        assert model_trace.nodes[name]["is_observed"] and not w[m == 0].any() and w[m == 1].ne(0).any()
