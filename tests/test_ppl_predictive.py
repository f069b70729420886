"""MC-Z posterior predictive of a finished run, its ArviZ InferenceData, and the PPC plot."""

import arviz as az
import numpy as np
import pytest
import torch

from bayessparse.batches import batches
from bayessparse.config import resolve
from bayessparse.predict import predict_probs
from bayessparse.ppl.predictive import plot_posterior_predictive, posterior_means, predictive_probs, to_inference_data
from bayessparse.sparsity.density import prunable_weights
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


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_inference_data_groups_shapes_and_loo(runs):
    run, final = runs["cigl"]
    labels = _labels(run.data.test)
    probs = predictive_probs(run, final, run.data.test, samples=40)
    idata = to_inference_data(probs, labels)
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(idata.groups())
    n = len(labels)
    assert idata.log_likelihood["y"].shape == (1, 40, n)
    assert idata.posterior_predictive["y"].shape == (1, 40, n)
    assert idata.posterior["probs"].shape == (1, 40, n, run.data.num_classes)
    assert idata.observed_data["y"].shape == (n,)
    expected = probs.double()[:, torch.arange(n), labels].log().numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, rtol=1e-12)
    replicated = idata.posterior_predictive["y"].values
    assert replicated.min() >= 0 and replicated.max() < run.data.num_classes
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_samples == 40 and loo.n_data_points == n
    # elpd is a sum of per-example log predictive densities: close to the MC predictive's NLL
    mc_nll = -torch.log(probs.double().mean(0)[torch.arange(n), labels]).sum().item()
    assert -loo.elpd_loo == pytest.approx(mc_nll, rel=0.1)


def test_posterior_predictive_plot_is_an_atomic_png(runs, tmp_path):
    run, final = runs["cigl"]
    idata = to_inference_data(predictive_probs(run, final, run.data.test, samples=8), _labels(run.data.test))
    path = tmp_path / "plots" / "ppc.png"
    fig = plot_posterior_predictive(idata, path, title="cigl")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["ppc.png"]
    assert len(fig.axes) == 2


def test_bad_arguments(runs):
    run, final = runs["cigl"]
    with pytest.raises(ValueError, match="samples"):
        predictive_probs(run, final, run.data.test, samples=0)
    with pytest.raises(ValueError, match="weights"):
        posterior_means(run, final, weights="mode")
    with pytest.raises(ValueError, match="labels"):
        to_inference_data(torch.rand(2, 5, 3), torch.zeros(4, dtype=torch.long))


def test_per_draw_batchnorm_statistics(runs):
    run, final = runs["cigl"]
    before = {k: v.clone() for k, v in final.state_dict().items()}
    test = run.data.test
    shared = predictive_probs(run, final, test, samples=3)
    per_draw = predictive_probs(run, final, test, samples=3, batchnorm="per_draw", batch_size=100)
    assert per_draw.shape == shared.shape
    torch.testing.assert_close(per_draw.sum(-1), torch.ones(3, len(test)))
    assert (per_draw - shared).abs().max() > 1e-3  # cnn2d has BatchNorm: re-estimated statistics differ
    again = predictive_probs(run, final, test, samples=3, batchnorm="per_draw", batch_size=100)
    assert torch.equal(again, per_draw)  # (the re-estimated variances depend on the batch size, as update_bn's)
    for key, value in final.state_dict().items():  # the caller's network is left alone
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="batchnorm"):
        predictive_probs(run, final, test, samples=3, batchnorm="none")
