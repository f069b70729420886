"""The UCI regression sets on their published splits: loaders checked against the split files, scores in the
target's original units checked against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from bayessparse.config import resolve
from bayessparse.data import load, task_of
from bayessparse.data.uci import UCI_SETS, VAL_FRACTION, uci_folder
from bayessparse.errors import ConfigError
from bayessparse.regressors import GaussianPredictions
from bayessparse.tasks import REGRESSION
from bayessparse.train import build_run, evaluate_model, fit

# rows, features, train / test rows of split 0 (the protocol's table)
SIZES = {"uci-concrete": (1030, 8, 927, 103), "uci-energy": (768, 8, 691, 77),
         "uci-wine": (1599, 11, 1439, 160), "uci-yacht": (308, 6, 277, 31)}


def split_files(name, k):
    folder = uci_folder(name)
    return (np.loadtxt(folder / f"index_train_{k}.txt", dtype=int), np.loadtxt(folder / f"index_test_{k}.txt", dtype=int))


def raw(name):
    folder = uci_folder(name)
    data = np.loadtxt(folder / "data.txt")
    return data, int(np.loadtxt(folder / "index_target.txt", dtype=int))


def original(bundle, split):
    """The targets of ``split`` back in the original units."""
    mean, std = bundle.target_scale
    return mean + std * getattr(bundle, split).tensors[1].double().numpy()


@pytest.mark.parametrize("name", sorted(UCI_SETS))
def test_the_files_match_the_protocol_table(name):
    rows, features, n_train, n_test = SIZES[name]
    data, target = raw(name)
    assert data.shape == (rows, features + 1) and target == features  # the target is the last column
    assert int(np.loadtxt(uci_folder(name) / "n_splits.txt")) == 20
    train, test = split_files(name, 0)
    assert (len(train), len(test)) == (n_train, n_test)


@pytest.mark.parametrize("name", sorted(UCI_SETS))
@pytest.mark.parametrize("k", [0, 7, 19])
def test_a_split_is_the_published_one_with_a_seeded_fifth_held_out(name, k):
    bundle = load(name, data_seed=k)
    train_rows, test_rows = split_files(name, k)
    data, target = raw(name)
    assert bundle.task is REGRESSION and task_of(name) is REGRESSION and bundle.num_classes == 1
    assert len(bundle.val) == round(VAL_FRACTION * len(train_rows))
    assert len(bundle.train) + len(bundle.val) == len(train_rows) and len(bundle.test) == len(test_rows)
    # the test targets are the target column of the published test rows, in order
    np.testing.assert_allclose(original(bundle, "test"), data[test_rows, target], rtol=1e-5, atol=1e-4)
    # train and validation partition the published training rows: their targets, as multisets
    both = np.sort(np.concatenate([original(bundle, "train"), original(bundle, "val")]))
    np.testing.assert_allclose(both, np.sort(data[train_rows, target]), rtol=1e-5, atol=1e-4)
    # standardised with the training part's statistics only
    y = bundle.train.tensors[1].double()
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-5
    x = bundle.train.tensors[0].double()
    assert float(x.mean(0).abs().max()) < 1e-4


def test_validation_is_seeded_by_the_split_alone():
    a, b, c = load("uci-yacht", data_seed=2), load("uci-yacht", data_seed=2), load("uci-yacht", data_seed=3)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1]) and torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not np.array_equal(original(a, "test"), original(c, "test"))  # another published split


def test_splits_are_disjoint_and_cover_the_rows():
    rows = SIZES["uci-energy"][0]
    for k in range(20):
        train, test = split_files("uci-energy", k)
        assert not set(train) & set(test) and len(set(train) | set(test)) == rows


@pytest.mark.parametrize("seed", [20, -1, True, 1.5])
def test_a_split_outside_the_files_is_a_one_line_error(seed):
    with pytest.raises(ConfigError) as err:
        load("uci-concrete", data_seed=seed)
    assert "data_seed" in str(err.value) and "\n" not in str(err.value)


def test_label_noise_and_n_samples_are_refused():
    with pytest.raises(ConfigError, match="label_noise"):
        load("uci-wine", label_noise=0.1)
    with pytest.raises(ConfigError, match="n_samples"):
        load("uci-wine", n_samples=100)


def test_scores_in_original_units_match_scipy_on_a_hand_case():
    # standardised N(0.5, 0.25) against y = 1.0; with y = 10 + 2 y_std it is N(11, 1) against 12
    means, variances, targets = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.25, 1.0]]), torch.tensor([1.0, -0.5])
    scores = GaussianPredictions(means.double(), variances.double(), targets.double(), scale=(10.0, 2.0)).scores()
    expected_nll = -np.mean([norm.logpdf(12.0, 11.0, 1.0), norm.logpdf(9.0, 8.0, 2.0)])
    assert scores["nll"] == pytest.approx(expected_nll, rel=1e-12)
    assert scores["rmse"] == pytest.approx(math.sqrt((1.0 ** 2 + 1.0 ** 2) / 2), rel=1e-12)
    standard = GaussianPredictions(means.double(), variances.double(), targets.double()).scores()
    assert scores["nll"] == pytest.approx(standard["nll"] + math.log(2.0), rel=1e-12)  # the Jacobian
    assert scores["coverage_90"] == standard["coverage_90"]


def test_a_run_reports_original_units(tmp_path):
    cfg = resolve({"data": "uci-yacht", "data_seed": 1, "method": "rigl", "epochs": 2, "batch_size": 32})
    assert cfg.model == "mlp"
    run = build_run(cfg)
    final = fit(run, progress=False)
    metrics, predictions = evaluate_model(run, final)
    mean, std = run.data.target_scale
    with torch.no_grad():
        f = final(run.data.test.tensors[0])[:, 0].double()
    y = original(run.data, "test")
    rmse = float(np.sqrt(np.mean((mean + std * f.numpy() - y) ** 2)))
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-6)
    sigma = std * metrics["noise_scale"]
    nll = -float(np.mean(norm.logpdf(y, mean + std * f.numpy(), sigma)))
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
