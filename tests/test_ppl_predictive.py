"""MC-Z posterior predictive of a finished run, its ArviZ InferenceData, and the PPC plot."""

import arviz as az
import numpy as np
import pyro
import pytest
import torch

from bayessparse.batches import batches
from bayessparse.config import resolve
from bayessparse.predict import predict_probs
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.ppl.predictive import (
    LatentSummary,
    latent_summaries,
    lppd,
    plot_posterior_predictive,
    posterior_means,
    predictive,
    predictive_probs,
    run_posterior,
    to_inference_data,
)
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet
from bayessparse.train import load_finished, train

BASE = {"data": "digits", "model": "cnn2d", "batch_size": 32, "lr": 0.05, "epochs": 2, "sparsity": 0.8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl-runs")
    train(resolve(BASE, {"method": "cigl", "drop_rate": 0.2}), root / "cigl", progress=False)
    train(resolve(BASE, {"method": "rigl", "weight_decay": 0.0}), root / "rigl", progress=False)
    return {name: load_finished(root / name) for name in ("cigl", "rigl")}


def _labels(dataset):
    return torch.cat([y for _, y in batches(dataset, 512)])


def test_shapes_normalisation_and_draws_shared_across_batches(runs):
    run, final = runs["cigl"]
    test = run.data.test
    state = torch.get_rng_state()
    probs = predictive_probs(run, final, test, samples=12, batch_size=100)
    assert torch.equal(torch.get_rng_state(), state)  # seeded, the global random state is untouched
    assert probs.shape == (12, len(test), run.data.num_classes) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(12, len(test)))
    # draw s is one network for every example: the batching does not change it
    torch.testing.assert_close(predictive_probs(run, final, test, 12, batch_size=37), probs)
    assert not torch.allclose(predictive_probs(run, final, test, 12, 100, seed=1), probs)
    assert (probs[0] - probs[1]).abs().max() > 1e-3  # different random masks, different predictions


def test_cigl_means_undo_the_keep_probability_of_the_averaged_model(runs):
    run, final = runs["cigl"]
    means = posterior_means(run, final)
    keep = run.method.random_mask.keep
    assert keep == pytest.approx(0.8)
    for name, w in prunable_weights(final).items():
        torch.testing.assert_close(means.get_parameter(name), w / keep)
    assert not means.training
    same = posterior_means(run, run.model, weights="means")
    for name, w in prunable_weights(run.model).items():
        assert torch.equal(same.get_parameter(name), w)


def test_without_a_random_mask_every_draw_is_the_network(runs):
    run, final = runs["rigl"]  # trained without weight decay: flat prior
    probs = predictive_probs(run, final, run.data.test, samples=3)
    single, _ = predict_probs(final, run.data.test)
    for s in range(3):
        torch.testing.assert_close(probs[s], single, rtol=1e-5, atol=1e-6)


def _train_subset(run, n=300):
    x, y = run.data.train.tensors
    return torch.utils.data.TensorDataset(x[:n], y[:n])


def test_latents_come_back_with_the_probabilities_and_match_the_draws(runs):
    run, final = runs["cigl"]
    probs, latents = predictive_probs(run, final, run.data.test, samples=6, return_latents=True)
    torch.testing.assert_close(probs, predictive_probs(run, final, run.data.test, samples=6))  # same draws
    # the same seed draws the same latents on another dataset; another seed draws others
    _, on_train = predictive_probs(run, final, _train_subset(run), samples=6, return_latents=True)
    assert torch.equal(on_train.per_draw["keep_fraction"], latents.per_draw["keep_fraction"])
    _, other = predictive_probs(run, final, run.data.test, samples=6, seed=1, return_latents=True)
    assert not torch.equal(other.per_draw["keep_fraction"], latents.per_draw["keep_fraction"])
    # by hand: Z of each draw, counted over M's active positions
    net = posterior_means(run, final)
    with pyro.get_param_store().scope():
        bayes, guide = run_posterior(run, net)
        again, draws = predictive(bayes, guide, run.data.test, 6, seed=0, return_draws=True)
        torch.testing.assert_close(again, probs)
        names = list(prunable_weights(final))
        assert latents.layers == tuple(n.rsplit(".", 1)[0] for n in names)
        assert set(latents.per_draw) == {"keep_fraction"} and set(latents.constant) == {"keep_probability", "density"}
        for col, name in enumerate(names):
            m = guide.mask(name)
            m = torch.ones_like(net.get_parameter(name)) if m is None else m
            z = draws[z_site(name)]
            expected = (z * m).flatten(1).sum(1) / m.sum()
            torch.testing.assert_close(latents.per_draw["keep_fraction"][:, col], expected.double())
            assert latents.constant["density"][col].item() == pytest.approx(m.mean().item())
    assert latents.constant["keep_probability"].tolist() == pytest.approx([0.8] * len(names), abs=1e-12)


def test_without_a_random_mask_every_weight_is_kept(runs):
    run, final = runs["rigl"]
    _, latents = predictive_probs(run, final, run.data.test, samples=2, return_latents=True)
    assert torch.equal(latents.per_draw["keep_fraction"], torch.ones(2, len(latents.layers), dtype=torch.float64))
    assert latents.constant["keep_probability"].tolist() == [1.0] * len(latents.layers)


def test_gaussian_family_latents_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4))
    masks = MaskSet(net, {"0.weight": 0.5, "2.weight": 1.0}, torch.Generator().manual_seed(0))
    with pyro.get_param_store().scope():
        model = SparseNetModel(net, 100, 1e-2, keep_prob=0.5, name="gauss")
        guide = SparseGuide(model, masks, family="gaussian", keep="learned", keep_init=0.7, init_scale=0.05)
        _, draws = predictive(model, guide, torch.randn(8, 20), 200, seed=0, return_draws=True)
        latents = latent_summaries(guide, draws)
    assert latents.layers == ("0", "2") and latents.num_draws == 200
    keep = latents.per_draw["keep_fraction"]
    assert ((keep >= 0) & (keep <= 1)).all() and keep.std(0).min() > 0
    torch.testing.assert_close(latents.constant["keep_probability"], torch.full((2,), 0.7, dtype=torch.float64))
    assert keep.mean(0).tolist() == pytest.approx([0.7, 0.7], abs=0.01)  # E[Z] of the hard relaxed Bernoulli
    torch.testing.assert_close(latents.constant["scale_mean"], torch.full((2,), 0.05, dtype=torch.float64))
    for col, name in enumerate(("0.weight", "2.weight")):
        u, m = net.get_parameter(name).detach().double(), masks.masks[name].double()
        snr = ((u.abs() / 0.05) * m).sum() / m.sum()
        assert latents.constant["snr_mean"][col].item() == pytest.approx(snr.item())
        kept = draws[z_site(name)].double() * m
        w = draws[name].double()
        expected = ((w - u) * kept).flatten(1).norm(dim=1) / (u * kept).flatten(1).norm(dim=1)
        torch.testing.assert_close(latents.per_draw["relative_deviation"][:, col], expected)
    # a Gaussian deviation of scale σ on weights of rms |U|: ‖W−U‖/‖U‖ ≈ σ / rms(U)
    rms = (net[0].weight.detach()[masks.masks["0.weight"].bool()] ** 2).mean().sqrt().item()
    assert latents.per_draw["relative_deviation"][:, 0].mean().item() == pytest.approx(0.05 / rms, rel=0.1)


def test_lppd_is_log_of_the_mean_probability():
    probs = torch.softmax(torch.randn(7, 11, 3, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.randint(0, 3, (11,), generator=torch.Generator().manual_seed(1))
    expected = probs.double().mean(0)[torch.arange(11), labels].log()
    torch.testing.assert_close(lppd(probs, labels), expected)
    torch.testing.assert_close(lppd(probs[:1], labels), probs[0, torch.arange(11), labels].double().log())


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_inference_data_layout_and_loo_on_the_fitted_data(runs):
    run, final = runs["cigl"]
    train_set, test = _train_subset(run), run.data.test
    train_labels, test_labels = _labels(train_set), _labels(test)
    s, n, m = 40, len(train_labels), len(test_labels)
    probs, latents = predictive_probs(run, final, train_set, samples=s, return_latents=True)
    test_probs = predictive_probs(run, final, test, samples=s)
    idata = to_inference_data(probs, train_labels, latents, test_probs=test_probs, test_labels=test_labels)
    assert set(idata.groups()) == {"posterior", "constant_data", "log_likelihood", "observed_data",
                                   "posterior_predictive", "predictions", "predictions_constant_data"}
    # the posterior holds latents, not predictions
    assert set(idata.posterior.data_vars) == {"keep_fraction"}
    keep = idata.posterior["keep_fraction"]
    assert keep.dims == ("chain", "draw", "layer") and keep.shape == (1, s, len(latents.layers))
    assert list(idata.posterior["layer"].values) == list(latents.layers)
    assert ((keep >= 0) & (keep <= 1)).all() and float(keep.std()) > 0
    np.testing.assert_allclose(keep.mean(("chain", "draw")).values, 0.8, atol=0.02)  # E[Z] = 1 - drop_rate
    np.testing.assert_allclose(idata.constant_data["keep_probability"].values, 0.8)
    # log-likelihood and observed data: the fitted (training) examples and their labels
    assert idata.log_likelihood["y"].shape == (1, s, n) and idata.log_likelihood["y"].dims[-1] == "obs"
    np.testing.assert_array_equal(idata.observed_data["y"].values, train_labels.numpy())
    expected = probs.double()[:, torch.arange(n), train_labels].log().numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, rtol=1e-12)
    replicated = idata.posterior_predictive["y"].values
    assert replicated.shape == (1, s, n) and replicated.min() >= 0 and replicated.max() < run.data.num_classes
    # the held-out set sits in the out-of-sample groups
    assert idata.predictions["y"].shape == (1, s, m) and idata.predictions["probs"].shape == (1, s, m, 10)
    np.testing.assert_array_equal(idata.predictions_constant_data["y_true"].values, test_labels.numpy())
    np.testing.assert_allclose(idata.predictions["probs"].values[0], test_probs.double().numpy())
    loo = az.loo(idata, pointwise=True)
    assert loo.n_samples == s and loo.n_data_points == n and loo.pareto_k.shape == (n,)
    # elpd_loo <= lppd of the same data (p_loo >= 0) and close to it
    fitted_lppd = lppd(probs, train_labels).sum().item()
    assert loo.elpd_loo <= fitted_lppd and loo.elpd_loo == pytest.approx(fitted_lppd, rel=0.1)
    assert loo.p_loo == pytest.approx(fitted_lppd - loo.elpd_loo)


def test_posterior_predictive_plot_is_an_atomic_png(runs, tmp_path):
    run, final = runs["cigl"]
    probs, latents = predictive_probs(run, final, _train_subset(run, 100), samples=8, return_latents=True)
    test = run.data.test
    idata = to_inference_data(probs, _labels(_train_subset(run, 100)), latents,
                              test_probs=predictive_probs(run, final, test, samples=8), test_labels=_labels(test))
    path = tmp_path / "plots" / "ppc.png"
    fig = plot_posterior_predictive(idata, path, title="cigl")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["ppc.png"]
    assert len(fig.axes) == 2
    assert "held-out, 359 examples" in fig.axes[1].get_xlabel() and "100 fitted" in fig.axes[0].get_title()
    fitted_only = to_inference_data(probs, _labels(_train_subset(run, 100)), latents)
    fig = plot_posterior_predictive(fitted_only, tmp_path / "fitted.png")
    assert "fitted, 100 examples" in fig.axes[1].get_xlabel()


def test_bad_arguments(runs):
    run, final = runs["cigl"]
    with pytest.raises(ValueError, match="samples"):
        predictive_probs(run, final, run.data.test, samples=0)
    with pytest.raises(ValueError, match="weights"):
        posterior_means(run, final, weights="mode")
    latents = LatentSummary(("a",), {"keep_fraction": torch.ones(2, 1)}, {})
    with pytest.raises(ValueError, match="labels"):
        to_inference_data(torch.rand(2, 5, 3), torch.zeros(4, dtype=torch.long), latents)
    with pytest.raises(ValueError, match="same 3 draws"):
        to_inference_data(torch.rand(3, 5, 3), torch.zeros(5, dtype=torch.long), latents)
    with pytest.raises(ValueError, match="together"):
        to_inference_data(torch.rand(2, 5, 3), torch.zeros(5, dtype=torch.long), latents,
                          test_probs=torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="same draws"):
        to_inference_data(torch.rand(2, 5, 3), torch.zeros(5, dtype=torch.long), latents,
                          test_probs=torch.rand(3, 4, 3), test_labels=torch.zeros(4, dtype=torch.long))


def test_per_draw_batchnorm_statistics(runs):
    run, final = runs["cigl"]
    before = {k: v.clone() for k, v in final.state_dict().items()}
    test = run.data.test
    shared = predictive_probs(run, final, test, samples=3)
    per_draw = predictive_probs(run, final, test, samples=3, batchnorm="per_draw", batch_size=100)
    assert per_draw.shape == shared.shape and not per_draw.requires_grad  # no autograd graph kept
    torch.testing.assert_close(per_draw.sum(-1), torch.ones(3, len(test)))
    assert (per_draw - shared).abs().max() > 1e-3  # cnn2d has BatchNorm: re-estimated statistics differ
    again = predictive_probs(run, final, test, samples=3, batchnorm="per_draw", batch_size=100)
    assert torch.equal(again, per_draw)  # (the re-estimated variances depend on the batch size, as update_bn's)
    for key, value in final.state_dict().items():  # the caller's network is left alone
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="batchnorm"):
        predictive_probs(run, final, test, samples=3, batchnorm="none")
