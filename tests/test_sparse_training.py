"""Training on sparse kernels equals masked-dense training: same seed, same weights within float rounding.

The sparse path (``kernels: sparse`` / ``auto``) computes the chosen linear layers as values on the
support of ``M`` (CSR products, the weight gradient sampled at the active positions) and runs SGD on
the values; mask updates fall back to the masked-dense step. Each test trains both paths from the
same seed and compares every tensor.
"""

import pytest
import torch
import torch.nn.functional as F

from bayessparse.config import resolve
from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.files import load_torch
from bayessparse.engines.sparse_kernels import AUTO_MAX_DENSITY, AUTO_MIN_WEIGHTS, pays
from bayessparse.kernels.sparse_linear import SparseStructure, sparse_linear
from bayessparse.train import build_run, train, train_epoch

BASE = {"data": "digits", "model": "mlp", "sparsity": 0.9, "epochs": 2, "update_interval": 4, "batch_size": 64}


@pytest.mark.parametrize("shape,density,lead", [((30, 20), 0.3, (7,)), ((64, 48), 0.05, (2, 5)), ((5, 9), 1.0, (1,))])
def test_sparse_linear_matches_dense_linear_forward_and_backward(shape, density, lead):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(shape, generator=g) < density).float()
    weight = torch.randn(shape, generator=g) * mask
    structure = SparseStructure(mask)
    values = structure.gather(weight).clone().requires_grad_(True)
    x = torch.randn(*lead, shape[1], generator=g, requires_grad=True)
    bias = torch.randn(shape[0], generator=g, requires_grad=True)
    y = sparse_linear(x, values, structure, bias)
    (y.sin().sum()).backward()

    dense_w = weight.clone().requires_grad_(True)
    x2, b2 = x.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    y2 = F.linear(x2, dense_w, b2)
    (y2.sin().sum()).backward()
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, b2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad, structure.gather(dense_w.grad), rtol=1e-5, atol=1e-5)


def test_transposed_structure_holds_the_same_matrix():
    mask = (torch.rand(17, 11, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    structure = SparseStructure(mask)
    values = torch.arange(1.0, structure.nnz + 1)
    dense = structure.matrix(values).to_dense()
    assert torch.equal(structure.transposed(values).to_dense(), dense.t())
    assert torch.equal(dense != 0, mask.bool())


def _trained(method: str, kernels: str, **extra):
    run = build_run(resolve({**BASE, "method": method, "kernels": kernels, **extra}))
    for _ in range(run.cfg.epochs):
        train_epoch(run, progress=False)
    return run


@pytest.mark.parametrize("method", ["static", "set", "rigl", "dst-ee", "cigl"])
def test_training_on_sparse_kernels_equals_masked_dense_training(method):
    extra = {"drop_rate": 0.1} if method == "cigl" else {}  # a drop rate that drops many values per step
    reference, sparse = _trained(method, "dense", **extra), _trained(method, "sparse", **extra)
    assert sparse.engine.names == ["features.1.weight", "features.3.weight", "classifier.weight"]
    assert sparse.step == reference.step and sparse.step > 2 * BASE["update_interval"]  # updates happened
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(sparse.model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    for name, mask in reference.method.masks.masks.items():
        assert torch.equal(sparse.method.masks.masks[name], mask), name
        nnz = sparse.method.masks.target_nnz[name]
        assert int((sparse.model.get_parameter(name) != 0).sum()) <= nnz == int(mask.sum())


def test_resume_after_an_interruption_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    import bayessparse.train as training

    cfg = resolve({**BASE, "method": "rigl", "kernels": "sparse", "epochs": 3})
    train(cfg, tmp_path / "full", progress=False)
    real_epoch = training.train_epoch
    calls = {"n": 0}

    def interrupt_second_epoch(run, progress):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(run, progress)

    monkeypatch.setattr(training, "train_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    a, b = (load_torch(tmp_path / f / "checkpoint.pt") for f in ("full", "cut"))
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name
    for x, y in zip(a["engine"]["momentum"], b["engine"]["momentum"]):
        assert torch.equal(x, y)


def test_auto_picks_linear_layers_where_the_measured_rule_says_it_pays():
    assert pays(AUTO_MAX_DENSITY, AUTO_MIN_WEIGHTS) and not pays(AUTO_MAX_DENSITY * 1.01, AUTO_MIN_WEIGHTS)
    assert not pays(0.01, AUTO_MIN_WEIGHTS - 1)
    run = build_run(resolve({**BASE, "data": "mnist1d", "n_samples": 1200, "width": 4, "sparsity": 0.95,
                             "method": "rigl", "kernels": "auto"}))
    expected = [name for name in run.method.masks.sparse_layers()
                if pays(float(run.method.masks.masks[name].mean()), run.method.masks.masks[name].numel())]
    assert run.engine.names == expected == ["features.3.weight"]


def test_convolutions_and_dense_runs_stay_on_dense_kernels():
    cnn = build_run(resolve({"data": "mnist1d", "n_samples": 1200, "model": "cnn1d", "method": "rigl",
                             "kernels": "sparse"}))
    assert all(not name.startswith("features") or "conv" not in name for name in cnn.engine.names)
    assert all(type(cnn.model.get_submodule(n.rpartition(".")[0])) is torch.nn.Linear for n in cnn.engine.names)
    dense = build_run(resolve({**BASE, "method": "dense", "kernels": "sparse"}))
    assert dense.engine.names == []


def test_sparse_kernels_are_refused_where_they_cannot_apply():
    with pytest.raises(ConfigError, match="kernels"):
        resolve({"method": "vcigl", "kernels": "sparse"})
    with pytest.raises(ConfigError, match="kernels must be"):
        resolve({"kernels": "csr"})


def test_a_diverged_sparse_step_is_reported():
    run = build_run(resolve({**BASE, "method": "rigl", "kernels": "sparse", "lr": 1e30}))
    with pytest.raises(TrainingDiverged, match="loss became"):
        for _ in range(3):
            train_epoch(run, progress=False)


def test_a_sparse_kernel_run_is_evaluated_with_csr_layers_and_the_same_predictions(tmp_path):
    from bayessparse.kernels.inference import CSRLinear
    from bayessparse.predict import predict_probs
    from bayessparse.train import inference_model, load_finished
    from bayessparse.uncertainty.metrics import summary

    cfg = resolve({"data": "mnist1d", "n_samples": 1200, "model": "mlp", "width": 4, "sparsity": 0.95,
                   "method": "rigl", "kernels": "auto", "epochs": 1})
    metrics = train(cfg, tmp_path / "run", progress=False)
    run, model = load_finished(tmp_path / "run")
    fast = inference_model(run, model)
    assert any(isinstance(m, CSRLinear) for m in fast.modules())
    dense = summary(*predict_probs(model, run.data.test, 256, "cpu"))
    assert metrics["accuracy"] == dense["accuracy"]
    assert metrics["nll"] == pytest.approx(dense["nll"], abs=1e-5)
    assert metrics["density"] == pytest.approx(0.05, abs=1e-3)
