"""CSR inference layers: the same predictions as the dense network, and conversion only where it pays."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import models
from bayessparse.errors import ConfigError
from bayessparse.kernels.inference import MIN_FEATURES, MIN_SPARSITY, CSRLinear, pays, sparse_inference
from bayessparse.predict import predict_logits
from bayessparse.sparsity.density import prunable_weights

EVERY_LAYER = {"min_sparsity": 0.0, "min_features": 0, "min_weights": 0}


def prune_(weights, sparsity: float, seed: int = 0) -> None:
    """Zero exactly ``N - round((1 - sparsity) · N)`` random entries of each weight (as a sparse run does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in weights:
            keep = round((1.0 - sparsity) * w.numel())
            order = torch.randperm(w.numel(), generator=gen)
            w.view(-1)[order[keep:]] = 0.0


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def kinds(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Linear, CSRLinear, nn.Conv1d))]


def dataset(shape: tuple[int, ...], n: int = 300, seed: int = 1) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def assert_same_predictions(fast: nn.Module, model: nn.Module, data: TensorDataset) -> None:
    for batch in (1, 64, 1024):
        got, _ = predict_logits(fast, data, batch_size=batch)
        want, _ = predict_logits(model, data, batch_size=batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.fixture
def sparse_mlp() -> nn.Module:
    """The MNIST-1D MLP at width 4 (hidden layers 1024 wide) with 95 % of every linear weight zero."""
    torch.manual_seed(0)
    model = models.build("mlp", 10, (40,), width=4)
    prune_(linear_weights(model), 0.95)
    return model.eval()


def test_a_95_percent_sparse_mlp_predicts_as_the_dense_one(sparse_mlp):
    fast = sparse_inference(sparse_mlp)
    # the default rule converts the 1024 x 1024 layer only: 40 inputs and 10 outputs are too thin to pay
    assert kinds(fast) == ["Linear", "CSRLinear", "Linear"]
    assert fast.features[3].nnz == round(0.05 * 1024 * 1024)
    assert_same_predictions(fast, sparse_mlp, dataset((40,)))
    every = sparse_inference(sparse_mlp, **EVERY_LAYER)
    assert kinds(every) == ["CSRLinear"] * 3
    assert_same_predictions(every, sparse_mlp, dataset((40,)))


def test_a_cnn_keeps_its_convolutions_and_converts_its_sparse_head():
    torch.manual_seed(0)
    model = models.build("cnn1d", 10, (1, 40))
    prune_(prunable_weights(model).values(), 0.9)  # the convolutions are sparse too, and stay as they are
    model.eval()
    fast = sparse_inference(model, min_sparsity=0.9, min_features=0, min_weights=0)
    assert kinds(fast) == ["Conv1d"] * 3 + ["CSRLinear"]
    assert_same_predictions(fast, model, dataset((1, 40)))
    assert kinds(sparse_inference(model)) == ["Conv1d"] * 3 + ["Linear"]  # a 10-row head never pays


def test_a_model_without_sparse_linear_layers_behaves_unchanged():
    torch.manual_seed(0)
    model = models.build("mlp", 10, (40,), width=4).eval()
    before = copy.deepcopy(model.state_dict())
    fast = sparse_inference(model, **EVERY_LAYER)  # even the loosest rule needs a zero to convert a layer
    assert fast is not model and kinds(fast) == ["Linear"] * 3
    data = dataset((40,))
    assert torch.equal(predict_logits(fast, data)[0], predict_logits(model, data)[0])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert all(p.requires_grad for p in model.parameters())


def test_the_copy_is_frozen_in_eval_mode_and_the_original_is_untouched(sparse_mlp):
    sparse_mlp.train()
    fast = sparse_inference(sparse_mlp)
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert sparse_mlp.training and kinds(sparse_mlp) == ["Linear"] * 3
    assert isinstance(fast.features[3].weight, torch.Tensor) and fast.features[3].weight.layout == torch.sparse_csr
    assert not any(isinstance(b, nn.Parameter) for b in fast.features[3].buffers())


def test_the_rule_counts_whole_weights_at_the_threshold():
    layer = nn.Linear(512, 512)
    keep = round((1 - MIN_SPARSITY) * layer.weight.numel())  # 13107: sparsity 0.950001..., or just below
    with torch.no_grad():
        layer.weight.view(-1)[keep:] = 0.0
    assert pays(layer)
    with torch.no_grad():
        layer.weight.view(-1)[keep] = 1.0  # one weight more than the rule allows
    assert not pays(layer)
    thin = nn.Linear(MIN_FEATURES - 1, 4096)
    with torch.no_grad():
        thin.weight.zero_()
        thin.weight[:, 0] = 1.0
    assert not pays(thin) and pays(thin, min_features=0)


@pytest.mark.parametrize("bias", [True, False])
def test_a_layer_takes_inputs_of_any_rank(bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, 12, bias=bias)
    prune_([layer.weight], 0.8)
    fast = CSRLinear.from_linear(layer)
    for shape in ((24,), (5, 24), (3, 5, 24)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), layer(x), rtol=1e-5, atol=1e-6)


def test_bsr_layout_where_blocks_divide_the_weight_csr_elsewhere(sparse_mlp):
    fast = sparse_inference(sparse_mlp, **EVERY_LAYER, layout="bsr", blocksize=8)
    layouts = [m.layout for m in fast.modules() if isinstance(m, CSRLinear)]
    assert layouts == ["bsr", "bsr", "csr"]  # 40 x 1024 and 1024 x 1024 divide into 8 x 8 blocks; 10 rows do not
    assert_same_predictions(fast, sparse_mlp, dataset((40,)))


def test_a_shared_layer_stays_shared_and_copies_work(sparse_mlp):
    shared = nn.Sequential(sparse_mlp.features[3], nn.ReLU(), sparse_mlp.features[3])
    fast = sparse_inference(shared, min_sparsity=0.9)
    assert isinstance(fast[0], CSRLinear) and fast[0] is fast[2]
    twin = copy.deepcopy(fast)  # a CSR tensor has no storage for copy.deepcopy to copy: the layer clones it
    assert twin[0] is twin[2] and twin[0].weight is not fast[0].weight
    x = torch.randn(7, 1024)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), shared(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, needle", [
    ({"min_sparsity": 1.5}, "min_sparsity"),
    ({"min_sparsity": math.nan}, "min_sparsity"),
    ({"min_sparsity": "0.9"}, "min_sparsity"),
    ({"min_features": -1}, "min_features"),
    ({"min_weights": 2.5}, "min_weights"),
    ({"layout": "coo"}, "layout"),
    ({"blocksize": 0}, "blocksize"),
])
def test_bad_arguments_are_one_line_errors(sparse_mlp, kwargs, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        sparse_inference(sparse_mlp, **kwargs)
    assert "\n" not in str(info.value)


def test_a_non_module_is_refused():
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        sparse_inference(torch.zeros(3, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predictions_match(sparse_mlp):
    model = sparse_mlp.cuda()
    fast = sparse_inference(model, **EVERY_LAYER)
    assert fast.features[3].weight.is_cuda
    x = torch.randn(64, 40, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
