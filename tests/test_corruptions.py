"""Corruptions: exact definitions, monotone severities, determinism, and CIFAR-10-C folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from torch.utils.data import TensorDataset

from bayessparse.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_PARAMS,
    corrupt,
    corrupt_dataset,
    corruption_suite,
    folder_corruption_suite,
    input_kind,
)
from bayessparse.errors import ConfigError


def smooth_signals(n: int = 64, length: int = 40, channels: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, length) if channels is None else (n, channels, length)
    x = torch.cumsum(torch.randn(shape, generator=g), dim=-1)
    return (x - x.mean()) / x.std()


def smooth_images(n: int = 32, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    x = torch.cumsum(torch.cumsum(x, -1), -2)
    return (x - x.mean()) / x.std()


def tabular(n: int = 300, f: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g) * torch.arange(1, f + 1) + 2.0


INPUTS = {
    "signal": smooth_signals,
    "signal-channels": lambda: smooth_signals(channels=2),
    "image": smooth_images,
    "tabular": tabular,
}
CASES = [(key, name) for key in INPUTS for name in CORRUPTIONS[key.split("-")[0]]]


def kind_of(key: str) -> str:
    return key.split("-")[0]


@pytest.mark.parametrize("key,name", CASES)
def test_shape_dtype_determinism_and_monotone_distortion(key, name):
    x = INPUTS[key]()
    kind = kind_of(key)
    distortion = []
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, kind=kind, seed=7)
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
        assert torch.equal(out, corrupt(x, name, severity, kind=kind, seed=7))  # deterministic
        distortion.append((out - x).double().pow(2).mean().sqrt().item())
    assert distortion[0] > 0
    assert all(a < b for a, b in zip(distortion, distortion[1:])), distortion  # strictly more damage
    assert corrupt(x.double(), name, 3, kind=kind).dtype == torch.float64


@pytest.mark.parametrize("key", list(INPUTS))
def test_gaussian_noise_std_grows_with_severity(key):
    x = INPUTS[key]()
    kind = kind_of(key)
    ref_std = x.std(0, correction=0) if kind == "tabular" else x.std(correction=0)
    for severity, v in zip(SEVERITIES, SEVERITY_PARAMS[(kind, "gaussian_noise")]):
        noise = corrupt(x, "gaussian_noise", severity, kind=kind, seed=1) - x
        np.testing.assert_allclose((noise.std(0) if kind == "tabular" else noise.std()).numpy(),
                                   (v * ref_std).numpy(), rtol=0.12)
    a = corrupt(x, "gaussian_noise", 2, kind=kind, seed=1)
    assert not torch.equal(a, corrupt(x, "gaussian_noise", 2, kind=kind, seed=2))  # the seed matters
    # severities share the noise draw: severity 5 is severity 1 scaled up
    n1 = corrupt(x, "gaussian_noise", 1, kind=kind, seed=1) - x
    n5 = corrupt(x, "gaussian_noise", 5, kind=kind, seed=1) - x
    v = SEVERITY_PARAMS[(kind, "gaussian_noise")]
    assert torch.allclose(n5, n1 * v[4] / v[0], atol=1e-5)


def test_contrast_and_scaling_keep_the_mean_and_shrink_deviations():
    img = smooth_images()
    for severity, v in zip(SEVERITIES, SEVERITY_PARAMS[("image", "contrast")]):
        out = corrupt(img, "contrast", severity, kind="image")
        mean = img.mean((2, 3), keepdim=True)
        assert torch.allclose(out.mean((2, 3), keepdim=True), mean, atol=1e-5)
        assert torch.allclose(out - mean, v * (img - mean), atol=1e-5)
    sig = smooth_signals()
    out = corrupt(sig, "scaling", 4, kind="signal")
    m = sig.mean(1, keepdim=True)
    assert torch.allclose(out, m + SEVERITY_PARAMS[("signal", "scaling")][3] * (sig - m), atol=1e-6)


def test_translation_is_a_circular_shift():
    sig = smooth_signals(n=20, length=40)
    shifts = [round(v * 40) for v in SEVERITY_PARAMS[("signal", "translation")]]
    assert shifts == [1, 2, 4, 6, 10]  # whole steps on MNIST-1D's length
    signs = None
    for severity, k in zip(SEVERITIES, shifts):
        out = corrupt(sig, "translation", severity, kind="signal", seed=3)
        row_signs = []
        for n in range(20):
            if torch.allclose(out[n], torch.roll(sig[n], k), atol=1e-6):
                row_signs.append(1)
            else:
                assert torch.allclose(out[n], torch.roll(sig[n], -k), atol=1e-6)
                row_signs.append(-1)
        assert signs is None or row_signs == signs  # the direction is fixed per example across severities
        signs = row_signs
    assert 0 < sum(s > 0 for s in signs) < 20  # both directions occur
    img = smooth_images(n=16, size=8)
    out = corrupt(img, "translation", 4, kind="image", seed=0)  # 0.125 * 8 = 1 pixel
    for n in range(16):
        options = [torch.roll(img[n], s, d) for s in (1, -1) for d in (1, 2)]
        assert any(torch.allclose(out[n], o, atol=1e-6) for o in options)
    half = corrupt(img, "translation", 2, kind="image", seed=0)  # 0.48 pixel: interpolation
    assert not any(torch.allclose(half[0], torch.roll(img[0], s, d), atol=1e-3) for s in (0, 1, -1) for d in (1, 2))


def test_blur_matches_scipy():
    sig = smooth_signals(n=5, length=40, seed=2).double()
    for severity, v in zip(SEVERITIES, SEVERITY_PARAMS[("signal", "blur")]):
        ref = gaussian_filter1d(sig.numpy(), sigma=v * 40, axis=-1, mode="mirror", truncate=3.0)
        np.testing.assert_allclose(corrupt(sig, "blur", severity, kind="signal").numpy(), ref, atol=1e-12)
    img = smooth_images(n=4, size=32, seed=3).double()
    for severity, v in zip(SEVERITIES, SEVERITY_PARAMS[("image", "blur")]):
        ref = gaussian_filter(img.numpy(), sigma=(0, 0, v * 32, v * 32), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(corrupt(img, "blur", severity, kind="image").numpy(), ref, atol=1e-12)
    const = torch.full((2, 40), 3.0)
    assert torch.allclose(corrupt(const, "blur", 5, kind="signal"), const)


def test_tabular_shift_and_scaling_per_feature():
    x = tabular().double()
    std, mu = x.std(0, correction=0), x.mean(0)
    prev = None
    for severity, v in zip(SEVERITIES, SEVERITY_PARAMS[("tabular", "feature_shift")]):
        delta = corrupt(x, "feature_shift", severity, kind="tabular", seed=4) - x
        assert torch.allclose(delta, delta[:1].expand_as(delta))
        assert torch.allclose(delta[0].abs(), v * std)
        signs = torch.sign(delta[0])
        assert prev is None or torch.equal(signs, prev)
        prev = signs
    out = corrupt(x, "feature_scaling", 5, kind="tabular", seed=4)
    ratio = (out - mu) / (x - mu)
    factors = ratio[0]
    assert torch.allclose(ratio, factors.expand_as(ratio))
    v = SEVERITY_PARAMS[("tabular", "feature_scaling")][4]
    assert torch.allclose(factors.log().abs(), torch.full_like(factors, v))


def nearest_centroid_accuracy(x_train, y_train, x, y) -> float:
    flat = x_train.reshape(len(x_train), -1)
    centroids = torch.stack([flat[y_train == k].mean(0) for k in range(int(y_train.max()) + 1)])
    pred = torch.cdist(x.reshape(len(x), -1), centroids).argmin(1)
    return (pred == y).double().mean().item()


def test_accuracy_of_a_trained_classifier_does_not_increase_with_severity():
    """Nearest-centroid classifiers fitted on clean digits (images) and Gaussian blobs (tabular)."""
    from bayessparse.data import load

    for name in ("digits", "synthetic"):
        data = load(name)
        x_train, y_train = data.train.tensors
        kind = input_kind(name, data.input_shape)
        acc: dict[str, list[float]] = {}
        for corruption, _, ds in corruption_suite(data.test, kind, seed=0):
            acc.setdefault(corruption, []).append(nearest_centroid_accuracy(x_train, y_train, *ds.tensors))
        clean = nearest_centroid_accuracy(x_train, y_train, *data.test.tensors)
        mean = np.mean(list(acc.values()), axis=0)
        assert clean > 0.8
        assert mean[-1] < mean[0] - 0.03, (name, acc)
        assert all(a[-1] <= a[0] + 0.01 for a in acc.values()), (name, acc)


def test_corrupt_dataset_and_suite():
    x, y = smooth_images(n=10), torch.arange(10)
    ds = corrupt_dataset(TensorDataset(x, y), "blur", 2, kind="image")
    assert torch.equal(ds.tensors[1], y)
    suite = list(corruption_suite(TensorDataset(x, y), "image", seed=0))
    assert [(n, s) for n, s, _ in suite] == [(n, s) for n in CORRUPTIONS["image"] for s in SEVERITIES]
    assert all(torch.equal(d.tensors[1], y) for _, _, d in suite)


def test_invalid_requests():
    x = smooth_signals(n=4)
    with pytest.raises(ValueError, match="unknown corruption 'contrast'"):
        corrupt(x, "contrast", 1, kind="signal")
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "blur", 6, kind="signal")
    with pytest.raises(ValueError, match="rank"):
        corrupt(x, "blur", 1, kind="image")
    assert input_kind("mnist1d", (40,)) == "signal" and input_kind("wine", (13,)) == "tabular"
    assert input_kind("newdata", (3, 16, 16)) == "image" and input_kind("newdata", (2, 50)) == "signal"
    with pytest.raises(ConfigError, match="shape"):
        input_kind("newdata", (1, 2, 3, 4))


# ----------------------------------------------------------------------------- CIFAR-10-C folders


def fake_cifar_c(root, n: int = 4, names=("gaussian_noise", "fog")):
    rng = np.random.default_rng(0)
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(n) % 10, 5).astype(np.uint8))
    images = {}
    for name in names:
        images[name] = rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", images[name])
    return images


def test_folder_suite_reads_severities_and_normalises(tmp_path):
    from bayessparse.data.cifar import SPECS

    images = fake_cifar_c(tmp_path / "CIFAR-10-C")
    suite = list(folder_corruption_suite(tmp_path / "CIFAR-10-C", "cifar10"))
    assert [(n, s) for n, s, _ in suite] == [(n, s) for n in ("fog", "gaussian_noise") for s in SEVERITIES]
    mean, std = SPECS["cifar10"].mean, SPECS["cifar10"].std
    for name, severity, ds in suite:
        x, y = ds.tensors
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        raw = images[name][(severity - 1) * 4 : severity * 4]  # rows of this severity
        c, i, j = 1, 5, 7
        expected = (raw[:, i, j, c] / 255.0 - mean[c]) / std[c]
        np.testing.assert_allclose(x[:, c, i, j].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert y.tolist() == [0, 1, 2, 3]


def test_folder_suite_errors(tmp_path):
    with pytest.raises(ConfigError, match="only for CIFAR"):
        folder_corruption_suite(tmp_path, "digits")
    with pytest.raises(ConfigError, match="not found"):
        folder_corruption_suite(tmp_path / "missing", "cifar10")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="labels.npy"):
        folder_corruption_suite(tmp_path / "empty", "cifar10")
    fake_cifar_c(tmp_path / "bad")
    np.save(tmp_path / "bad" / "blur.npy", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(ConfigError, match="blur.npy"):
        folder_corruption_suite(tmp_path / "bad", "cifar10")
