"""Hardening of the library entry points: a corrupt MNIST-1D cache, a lone last training example under
BatchNorm, bfloat16 probabilities in the metrics, and wrong argument types in the Python API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import Dataset, TensorDataset

import bayessparse.data.mnist1d as mnist1d_module
import models
from bayessparse.batches import batches, inputs, num_batches
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.predict import predict_logits, predict_probs
from bayessparse.workflows.predictors import ensemble_predictor, labels_of, scorecard
from bayessparse.uncertainty import metrics as M
from bayessparse.uncertainty import ood as O

# ---------------------------------------------------------------- a corrupt MNIST-1D cache


@pytest.fixture
def small_cache(tmp_path, monkeypatch):
    """A fresh cache folder and the generation arguments of the smallest MNIST-1D, with its fresh arrays."""
    monkeypatch.setenv("BAYESSPARSE_CACHE", str(tmp_path))
    args = mnist1d_module.generation_args(mnist1d_module.MIN_SAMPLES)
    return args, mnist1d_module.cache_path(args), mnist1d_module.generate(args)


def _save(path, **arrays):
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _corrupt(kind, path, fresh):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not an npz file\x00\xff" * 40)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _save(path, **fresh)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "missing array":
        _save(path, **{k: v for k, v in fresh.items() if k != "y_test"})
    elif kind == "wrong dtype":
        _save(path, **{**fresh, "x": fresh["x"].astype(np.float64)})
    elif kind == "wrong shape":
        _save(path, **{**fresh, "y": fresh["y"][:-3]})
    elif kind == "single array":
        with path.open("wb") as handle:
            np.save(handle, fresh["x"])
    elif kind == "pickled objects":
        _save(path, **{**fresh, "x": np.array([object()] * 3, dtype=object)})
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["garbage", "empty", "truncated", "missing array", "wrong dtype", "wrong shape", "single array", "pickled objects"]
)
def test_corrupt_mnist1d_cache_is_regenerated_with_one_warning(small_cache, kind):
    args, path, fresh = small_cache
    _corrupt(kind, path, fresh)
    with pytest.warns(UserWarning) as caught:
        arrays = mnist1d_module.cached_arrays(args)
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    assert set(arrays) == set(fresh)
    for name in fresh:
        assert arrays[name].dtype == fresh[name].dtype and np.array_equal(arrays[name], fresh[name])
    with np.load(path, allow_pickle=False) as fixed:  # rewritten in place, no temporary file left
        assert all(np.array_equal(fixed[name], fresh[name]) for name in fresh)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = mnist1d_module.cached_arrays(args)  # the repaired file loads silently
    assert all(np.array_equal(again[name], fresh[name]) for name in fresh)


def test_corrupt_mnist1d_cache_does_not_break_load(small_cache):
    args, path, _ = small_cache
    path.write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="corrupt"):
        bundle = mnist1d_module.load_mnist1d(n_samples=mnist1d_module.MIN_SAMPLES)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == mnist1d_module.MIN_SAMPLES


# ---------------------------------------------------------------- no lone last example in a batch


class PlainDataset(Dataset):
    """Not a TensorDataset: batches go through a DataLoader."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _datasets(n):
    x, y = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), torch.arange(n)
    return TensorDataset(x, y), PlainDataset(x, y)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_never_end_in_one_example_and_num_batches_agrees(shuffle):
    for n in [0, 1, 2, 3, 5, 9, 10, 11, 17, 64, 65, 100, 101, 129]:
        for batch_size in [1, 2, 3, 4, 8, 10, 16, 64, 100, 128, 200]:
            for dataset in _datasets(n):
                gen = torch.Generator().manual_seed(n * 1000 + batch_size)
                sizes, seen = [], []
                for x, y in batches(dataset, batch_size, shuffle=shuffle, generator=gen):
                    assert torch.equal(x[:, 0].long(), y)
                    sizes.append(len(y))
                    seen += y.tolist()
                assert len(sizes) == num_batches(dataset, batch_size), (n, batch_size, type(dataset))
                assert sorted(seen) == list(range(n))  # every example exactly once
                if len(sizes) > 1:
                    assert sizes[-1] > 1 or batch_size == 1, (n, batch_size, sizes)
                assert sizes == _expected_sizes(n, batch_size)
                xs = list(inputs(dataset, batch_size))
                assert [len(x) for x in xs] == sizes
                assert torch.equal(torch.cat(xs)[:, 0].long(), torch.arange(n)) if n else xs == []


def _expected_sizes(n, batch_size):
    """Full batches, then the rest; a rest of one example joins the batch before it (batch_size > 1)."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    if len(sizes) > 1 and batch_size > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def test_shuffled_batches_replay_the_same_order_for_both_dataset_kinds():
    tensor_set, plain_set = _datasets(21)
    a = [y.tolist() for _, y in batches(tensor_set, 4, shuffle=True, generator=torch.Generator().manual_seed(3))]
    b = [y.tolist() for _, y in batches(plain_set, 4, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert a == b and [len(y) for y in a] == [4, 4, 4, 4, 5]


def test_batchnorm_model_trains_on_every_batch_when_one_example_is_left_over():
    torch.manual_seed(0)
    model = models.build("resnet18", 10, (1, 8, 8), width=0.125)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    n, batch_size = 9, 4  # 4 + 4 + 1 without folding
    x, y = torch.randn(n, 1, 8, 8), torch.arange(n) % 10
    for dataset in (TensorDataset(x, y), PlainDataset(x, y)):
        model.train()
        for xb, yb in batches(dataset, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)):
            nn.functional.cross_entropy(model(xb), yb).backward()
        update_bn(inputs(dataset, batch_size), model)  # BatchNorm re-estimation, train mode inside


def test_digits_resnet18_with_a_last_batch_of_one_trains_an_epoch():
    from bayessparse.train import build_run, recalibrate_batchnorm, train_epoch

    cfg = resolve({"data": "digits", "model": "resnet18", "width": 0.125, "epochs": 1, "batch_size": 1078,
                   "eval_batch_size": 1078})
    run = build_run(cfg)
    assert len(run.data.train) % cfg.batch_size == 1
    assert run.steps_per_epoch == 1
    assert np.isfinite(train_epoch(run, progress=False))
    assert run.step == run.steps_per_epoch
    recalibrate_batchnorm(run, run.model)


# ---------------------------------------------------------------- bfloat16 probabilities


def _bf16_case(n=2000, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = (2 * torch.randn(n, c, generator=g)).softmax(-1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    return probs, probs.to(torch.bfloat16), labels


@pytest.mark.parametrize("c", [2, 10, 100])
def test_bfloat16_probabilities_are_accepted_and_agree_with_float32(c):
    p32, p16, labels = _bf16_case(c=c)
    assert (p16.double().sum(-1) - 1).abs().max() > M.PROB_ATOL  # the old tolerance refused these
    assert M.expected_calibration_error(p16, labels) == pytest.approx(M.expected_calibration_error(p32, labels), abs=0.01)
    assert M.nll(p16, labels) == pytest.approx(M.nll(p32, labels), rel=0.01)
    assert M.brier(p16, labels) == pytest.approx(M.brier(p32, labels), abs=0.01)
    assert M.accuracy(p16, labels) == pytest.approx(M.accuracy(p32, labels), abs=0.01)
    s16, s32 = M.summary(p16, labels), M.summary(p32, labels)
    assert s16 == pytest.approx(s32, abs=0.01)
    assert O.entropy(p16).dtype == torch.float64
    assert torch.allclose(O.entropy(p16), O.entropy(p32).double(), atol=0.05)


def test_bfloat16_softmax_of_bfloat16_logits_and_per_sample_probabilities():
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(4, 500, 10, generator=g)).to(torch.bfloat16)
    labels = torch.randint(10, (500,), generator=g)
    per_sample = logits.softmax(-1)  # computed in bfloat16
    assert M.nll(per_sample, labels) == pytest.approx(M.nll_from_logits(logits.float(), labels), rel=0.01)
    assert M.summary(per_sample, labels)["ece"] >= 0.0


def test_non_normalised_bfloat16_probabilities_are_still_refused():
    _, p16, labels = _bf16_case()
    short = (p16.float() * 0.9).to(torch.bfloat16)  # rows sum to 0.9
    for fn in (M.nll, M.expected_calibration_error, M.summary, M.accuracy, M.brier):
        with pytest.raises(ValueError, match="sum to 1"):
            fn(short, labels)
    with pytest.raises(ValueError, match="sum to 1"):
        O.max_softmax(short)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        M.nll(torch.full((3, 2), 1.1, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.long))


def test_probability_tolerance_depends_on_the_dtype():
    assert M.prob_atol(torch.float32) == M.prob_atol(torch.float64) == M.PROB_ATOL
    assert M.PROB_ATOL < M.prob_atol(torch.float16) < M.prob_atol(torch.bfloat16) < 0.05
    off = torch.tensor([[0.5, 0.495]])  # sum 0.995: within bfloat16 rounding, not within float32's
    with pytest.raises(ValueError, match="sum to 1"):
        M.nll(off, torch.zeros(1, dtype=torch.long))
    assert M.nll(off.to(torch.bfloat16), torch.zeros(1, dtype=torch.long)) > 0


# ---------------------------------------------------------------- wrong types in the Python API


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((["epochs", 3],), "config layer 1 must be a mapping of field: value, got list"),
        (("x",), "config layer 1 must be a mapping of field: value, got str"),
        (({"epochs": 2}, 3), "config layer 2 must be a mapping of field: value, got int"),
        (([],), "config layer 1 must be a mapping of field: value, got list"),
    ],
)
def test_resolve_refuses_layers_that_are_not_mappings(layers, message):
    with pytest.raises(ConfigError) as err:
        resolve(*layers)
    assert str(err.value) == message


def test_resolve_still_takes_mappings_and_none():
    assert resolve(None, {"epochs": 2}, None).epochs == 2


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    data = TensorDataset(torch.randn(7, 3), torch.arange(7) % 4)
    return model, data


@pytest.mark.parametrize("fn", [predict_probs, predict_logits])
@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8", None, True])
def test_predict_refuses_a_bad_batch_size(fn, batch_size):
    model, data = _tiny()
    with pytest.raises(ConfigError, match=f"^batch_size must be an int >= 1, got {batch_size!r}$"):
        fn(model, data, batch_size=batch_size)


@pytest.mark.parametrize("fn", [predict_probs, predict_logits])
def test_predict_refuses_an_empty_dataset_and_a_tensor(fn):
    model, _ = _tiny()
    with pytest.raises(ConfigError, match="^dataset is empty"):
        fn(model, TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ConfigError, match="^dataset is empty"):
        fn(model, [])
    with pytest.raises(ConfigError, match=r"^dataset must be a dataset of \(x, y\) pairs .*got Tensor$"):
        fn(model, torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="^dataset must be a dataset .*got int$"):
        fn(model, 5)


def test_predict_refuses_a_model_that_is_not_a_module_and_keeps_the_training_mode():
    model, data = _tiny()
    with pytest.raises(ConfigError, match="^model must be a torch.nn.Module, got str$"):
        predict_probs("resnet18", data)
    model.train()
    probs, labels = predict_probs(model, data, batch_size=3)
    assert model.training and probs.shape == (7, 4) and torch.equal(labels, data.tensors[1])
    assert torch.allclose(probs.sum(-1), torch.ones(7))


def test_batches_and_num_batches_refuse_a_bad_batch_size():
    _, data = _tiny()
    for batch_size in (0, -2, 1.0):
        with pytest.raises(ConfigError, match="^batch_size must be an int >= 1"):
            list(batches(data, batch_size))
        with pytest.raises(ConfigError, match="^batch_size must be an int >= 1"):
            num_batches(data, batch_size)
    assert num_batches(data, np.int64(3)) == 2  # NumPy integers are integers


def test_predictors_refuse_bad_arguments():
    _, data = _tiny()
    with pytest.raises(ConfigError, match="^dataset is empty"):
        labels_of(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ConfigError, match="^batch_size must be an int >= 1, got 0$"):
        labels_of(data, 0)
    with pytest.raises(ConfigError, match="^members must be a non-empty sequence of predictors"):
        ensemble_predictor([])
    with pytest.raises(ConfigError, match="^members must be a non-empty sequence of predictors"):
        ensemble_predictor([lambda d: torch.zeros(len(d), 2), "not a predictor"])
    with pytest.raises(ConfigError, match="^members must be a sequence of predictors, got function$"):
        ensemble_predictor(lambda d: torch.zeros(len(d), 2))
    with pytest.raises(ConfigError, match="^predict must be a predictor .*got str$"):
        scorecard(None, "model")
    ens = ensemble_predictor((lambda d: torch.zeros(len(d), 2), lambda d: torch.ones(len(d), 2)))
    assert torch.allclose(ens(data).exp().sum(-1), torch.ones(7, dtype=torch.float64))
