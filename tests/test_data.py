"""Tests of bayessparse.data: shapes, seeding, splits, label noise, the synthetic posterior, caching, CIFAR files."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import bayessparse.data.mnist1d as mnist1d_module
from bayessparse.data import DATASETS, load
from bayessparse.data.cifar import SPECS
from bayessparse.data.noise import noisy_label_posterior
from bayessparse.data.splits import stratified_holdout
from bayessparse.errors import ConfigError

EMBEDDED = {
    # name: (num_classes, input_shape, (n_train, n_val, n_test)) at the default size
    "mnist1d": (10, (40,), (3600, 400, 1000)),
    "digits": (10, (1, 8, 8), (1079, 359, 359)),
    "breast_cancer": (2, (30,), (341, 114, 114)),
    "wine": (3, (13,), (106, 36, 36)),
    "synthetic": (3, (2,), (1800, 600, 600)),
}
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """All tests share one throwaway MNIST-1D cache, never the user's."""
    monkeypatch.setenv("BAYESSPARSE_CACHE", str(tmp_path_factory.getbasetemp() / "shared-cache"))


def tensors(bundle, split):
    return getattr(bundle, split).tensors


# ---------------------------------------------------------------- registry and arguments


def test_registry_lists_every_dataset():
    assert set(DATASETS) == {"mnist1d", "digits", "breast_cancer", "wine", "synthetic", "cifar10", "cifar100", "diabetes",
                             "uci-concrete", "uci-energy", "uci-wine", "uci-yacht"}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_shapes_dtypes_and_sizes(name):
    num_classes, input_shape, sizes = EMBEDDED[name]
    bundle = load(name)
    assert bundle.name == name
    assert bundle.num_classes == num_classes
    assert bundle.input_shape == input_shape
    assert bundle.train_eval is None
    for split, size in zip(SPLITS, sizes):
        dataset = getattr(bundle, split)
        assert isinstance(dataset, TensorDataset)
        x, y = dataset.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (size, *input_shape)
        assert y.shape == (size,)
        assert set(y.unique().tolist()) == set(range(num_classes))
    assert (bundle.true_probs is not None) == (name == "synthetic")


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_same_seed_gives_identical_tensors(name):
    first, second = load(name, data_seed=3, label_noise=0.2), load(name, data_seed=3, label_noise=0.2)
    for split in SPLITS:
        for a, b in zip(tensors(first, split), tensors(second, split)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_other_seed_gives_other_validation_split(name):
    val_0, val_1 = tensors(load(name, data_seed=0), "val")[0], tensors(load(name, data_seed=1), "val")[0]
    assert val_0.shape == val_1.shape
    assert not torch.equal(val_0, val_1)


def test_mnist1d_test_split_is_the_packages_whatever_the_seed():
    assert torch.equal(tensors(load("mnist1d", data_seed=0), "test")[0], tensors(load("mnist1d", data_seed=5), "test")[0])


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown dataset 'mnist' \(choose from: mnist1d, digits"):
        load("mnist")


@pytest.mark.parametrize("label_noise", [-0.1, 1.0, 1.5, "0.1", True, float("nan")])
def test_bad_label_noise_is_a_config_error(label_noise):
    with pytest.raises(ConfigError, match="label_noise"):
        load("wine", label_noise=label_noise)


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "cifar10", "cifar100"])
def test_n_samples_rejected_where_unsupported(name):
    with pytest.raises(ConfigError, match=f"n_samples is not supported for dataset '{name}'"):
        load(name, n_samples=100)


@pytest.mark.parametrize(("name", "n_samples"), [("synthetic", 5), ("mnist1d", 10), ("synthetic", 100.0)])
def test_bad_n_samples_is_a_config_error(name, n_samples):
    with pytest.raises(ConfigError, match=f"n_samples must be an integer >= .* for dataset '{name}'"):
        load(name, n_samples=n_samples)


@pytest.mark.parametrize("data_seed", [-1, 1.5, None])
def test_bad_data_seed_is_a_config_error(data_seed):
    with pytest.raises(ConfigError, match="data_seed"):
        load("wine", data_seed=data_seed)


def test_n_samples_sets_total_size():
    synthetic, mnist1d = load("synthetic", n_samples=1000), load("mnist1d", n_samples=500)
    assert [len(synthetic.train), len(synthetic.val), len(synthetic.test)] == [600, 200, 200]
    assert [len(mnist1d.train), len(mnist1d.val), len(mnist1d.test)] == [360, 40, 100]


# ---------------------------------------------------------------- splits and standardisation


def test_stratified_holdout_sizes_and_class_quotas():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    kept, held = stratified_holdout(labels, 23, np.random.default_rng(0))
    assert len(held) == 23 and len(kept) == 77
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    quota = 23 * np.array([50, 30, 15, 5]) / 100
    counts = np.bincount(labels[held], minlength=4)
    assert np.all(np.abs(counts - quota) < 1)


def test_splits_partition_the_data():
    bundle = load("synthetic", data_seed=2)  # continuous inputs: every row is distinct
    rows = torch.cat([tensors(bundle, s)[0] for s in SPLITS])
    assert len(torch.unique(rows, dim=0)) == len(rows) == 3000


def test_validation_split_is_stratified():
    bundle = load("digits", data_seed=2)
    y_train, y_val = tensors(bundle, "train")[1], tensors(bundle, "val")[1]
    expected_val = torch.bincount(y_train, minlength=10) * len(y_val) / len(y_train)
    assert torch.all((torch.bincount(y_val, minlength=10) - expected_val).abs() <= 2)


@pytest.mark.parametrize("name", ["breast_cancer", "wine"])
def test_tabular_standardised_with_train_statistics_only(name):
    bundle = load(name)
    x_train, x_test = tensors(bundle, "train")[0].double(), tensors(bundle, "test")[0].double()
    torch.testing.assert_close(x_train.mean(0), torch.zeros(x_train.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0, unbiased=False), torch.ones_like(x_train[0]), atol=1e-5, rtol=0)
    assert x_test.mean(0).abs().max() > 0.05
    assert (x_test.std(0, unbiased=False) - 1).abs().max() > 0.05


def test_digits_standardised_by_one_scalar_from_train():
    x_train, x_test = tensors(load("digits"), "train")[0].double(), tensors(load("digits"), "test")[0].double()
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std(unbiased=False).item() - 1) < 1e-5
    assert abs(x_test.mean().item()) > 1e-4
    # one scalar for all pixels: the always-blank corner pixel maps to one value in every split
    assert torch.unique(x_train[:, 0, 0, 0]).numel() == 1
    assert torch.equal(torch.unique(x_test[:, 0, 0, 0]), torch.unique(x_train[:, 0, 0, 0]))


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize(("name", "num_classes"), [("digits", 10), ("mnist1d", 10), ("synthetic", 3)])
def test_label_noise_changes_expected_fraction_of_train_labels_only(name, num_classes):
    eps = 0.3
    clean, noisy = load(name, data_seed=4), load(name, data_seed=4, label_noise=eps)
    changed = (tensors(clean, "train")[1] != tensors(noisy, "train")[1]).double().mean().item()
    n_train = len(clean.train)
    expected = eps * (num_classes - 1) / num_classes
    assert abs(changed - expected) < 4 * np.sqrt(expected * (1 - expected) / n_train)
    assert torch.equal(tensors(clean, "train")[0], tensors(noisy, "train")[0])
    for split in ("val", "test"):
        for a, b in zip(tensors(clean, split), tensors(noisy, split)):
            assert torch.equal(a, b)


def test_noisy_label_posterior_formula():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]], dtype=torch.float64)
    expected = torch.tensor([[0.7 + 0.1, 0.1, 0.1], [0.14 + 0.1, 0.35 + 0.1, 0.21 + 0.1]], dtype=torch.float64)
    torch.testing.assert_close(noisy_label_posterior(probs, 0.3), expected)


# ---------------------------------------------------------------- synthetic: the exact posterior


def test_synthetic_true_probs_are_distributions_of_the_right_shape():
    bundle = load("synthetic")
    for split in SPLITS:
        probs = bundle.true_probs[split]
        assert probs.dtype == torch.float64 and probs.shape == (len(getattr(bundle, split)), 3)
        assert torch.all(probs >= 0)
        torch.testing.assert_close(probs.sum(1), torch.ones(len(probs), dtype=torch.float64))


def test_synthetic_bayes_accuracy_matches_expected_and_overlaps():
    bundle = load("synthetic", n_samples=50_000)
    probs, y = bundle.true_probs["test"], tensors(bundle, "test")[1]
    accuracy = (probs.argmax(1) == y).double().mean().item()
    expected = probs.max(1).values.mean().item()
    assert abs(accuracy - expected) < 4 * np.sqrt(expected * (1 - expected) / len(y))
    assert 0.8 < expected < 0.9


def assert_calibrated(probs: torch.Tensor, labels: torch.Tensor, bins: int = 5):
    """Within each probability bin of each class, the label frequency matches the mean probability."""
    for k in range(probs.shape[1]):
        p = probs[:, k]
        hit = (labels == k).double()
        which = torch.clamp((p * bins).long(), max=bins - 1)
        for b in range(bins):
            members = which == b
            n = int(members.sum())
            if n < 200:
                continue
            mean_p = p[members].mean().item()
            assert abs(hit[members].mean().item() - mean_p) < 4 * np.sqrt(mean_p * (1 - mean_p) / n) + 0.005


def test_synthetic_true_probs_are_calibrated_clean_and_noisy():
    eps = 0.4
    clean = load("synthetic", n_samples=50_000, data_seed=1)
    noisy = load("synthetic", n_samples=50_000, data_seed=1, label_noise=eps)
    assert_calibrated(clean.true_probs["test"], tensors(clean, "test")[1])
    assert_calibrated(noisy.true_probs["train"], tensors(noisy, "train")[1])
    torch.testing.assert_close(noisy.true_probs["train"], (1 - eps) * clean.true_probs["train"] + eps / 3)
    for split in ("val", "test"):
        assert torch.equal(noisy.true_probs[split], clean.true_probs[split])


# ---------------------------------------------------------------- MNIST-1D generation and cache


def test_mnist1d_is_cached_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESSPARSE_CACHE", str(tmp_path))
    import mnist1d.data

    calls = []
    real = mnist1d.data.make_dataset
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: calls.append(1) or real(args))
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()

    first = load("mnist1d", n_samples=300)
    assert calls == [1]
    assert np.random.get_state()[1].tolist() == np_state[1].tolist() and np.random.get_state()[2] == np_state[2]
    assert random.getstate() == py_state
    assert [p.name.startswith("mnist1d-") and p.suffix == ".npz" for p in tmp_path.iterdir()] == [True]

    second = load("mnist1d", n_samples=300)
    assert calls == [1]
    for split in SPLITS:
        for a, b in zip(tensors(first, split), tensors(second, split)):
            assert torch.equal(a, b)

    load("mnist1d", n_samples=400)  # other arguments, other cache entry
    assert calls == [1, 1] and len(list(tmp_path.iterdir())) == 2


def test_mnist1d_values_are_the_packages_standardised_output():
    bundle = load("mnist1d")
    x = torch.cat([tensors(bundle, s)[0] for s in SPLITS]).double()
    assert abs(x.mean().item()) < 1e-6 and abs(x.std(unbiased=False).item() - 1) < 1e-6
    assert mnist1d_module.cache_path(mnist1d_module.generation_args(None)).is_file()


# ---------------------------------------------------------------- CIFAR from local files


def write_fake_cifar(root, num_classes: int, n_train: int, n_test: int):
    """A tiny CIFAR folder in the real pickle layout (random pixels); returns the training labels."""
    rng = np.random.default_rng(0)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    if num_classes == 10:
        folder, meta = root / "cifar-10-batches-py", ("batches.meta", "label_names")
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file = "test_batch"
    else:
        folder, meta = root / "cifar-100-python", ("meta", "fine_label_names")
        train_files, test_file = ["train"], "test"
    folder.mkdir(parents=True)
    train_labels = []
    for i, name in enumerate(train_files + [test_file]):
        n = n_test if name == test_file else n_train // len(train_files)
        labels = rng.integers(num_classes, size=n).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, label_key: labels}, handle)
        if name != test_file:
            train_labels += labels
    with open(folder / meta[0], "wb") as handle:
        pickle.dump({meta[1]: [f"class{k}" for k in range(num_classes)]}, handle)
    return np.array(train_labels)


@pytest.fixture
def skip_md5(monkeypatch):
    """The fake files cannot match torchvision's md5 sums of the real ones: check only that they exist."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.mark.parametrize(("name", "num_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_local_folder(tmp_path, skip_md5, name, num_classes):
    train_labels = write_fake_cifar(tmp_path, num_classes, n_train=5100, n_test=20)
    bundle = load(name, root=str(tmp_path), data_seed=1, label_noise=0.5)
    assert bundle.num_classes == num_classes and bundle.input_shape == (3, 32, 32)
    assert [len(bundle.train), len(bundle.val), len(bundle.test), len(bundle.train_eval)] == [100, 5000, 20, 100]
    assert bundle.train_eval.indices == bundle.train.indices
    assert sorted(bundle.train.indices + bundle.val.indices) == list(range(5100))

    # val, test and train_eval are deterministic (no augmentation) and normalised with the CIFAR statistics
    image, label = bundle.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == train_labels[bundle.val.indices[0]]
    torch.testing.assert_close(bundle.val[0][0], image)
    raw = torch.from_numpy(bundle.val.dataset.data[bundle.val.indices[0]]).permute(2, 0, 1).double() / 255
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (SPECS[name].mean, SPECS[name].std))
    torch.testing.assert_close(image.double(), (raw - mean) / std, atol=1e-6, rtol=0)

    # train is augmented: repeated reads of one image differ (crop offset / flip)
    torch.manual_seed(0)
    assert any(not torch.equal(bundle.train[0][0], bundle.train[0][0]) for _ in range(10))

    # label noise: train and train_eval carry the same noisy labels, val the original ones
    noisy = [bundle.train.dataset.targets[i] for i in bundle.train.indices]
    assert noisy == [bundle.train_eval.dataset.targets[i] for i in bundle.train_eval.indices]
    assert noisy != train_labels[bundle.train.indices].tolist()
    assert [bundle.val.dataset.targets[i] for i in bundle.val.indices] == train_labels[bundle.val.indices].tolist()


@pytest.mark.parametrize(("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_folder_names_path_and_fix(tmp_path, name, folder):
    with pytest.raises(ConfigError) as missing:
        load(name, root=str(tmp_path))
    message = str(missing.value)
    assert "\n" not in message
    assert str(tmp_path / folder) in message and "--data-root" in message
    with pytest.raises(ConfigError, match=f"'{folder}'.*--data-root"):
        load(name)


def test_cifar_checksum_failure_is_a_config_error(tmp_path):
    write_fake_cifar(tmp_path, 10, n_train=50, n_test=10)
    with pytest.raises(ConfigError, match="unreadable"):
        load("cifar10", root=str(tmp_path))
