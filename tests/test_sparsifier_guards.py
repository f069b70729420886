"""The drop-in API refuses misuse in one line, at construction or load time, before it changes anything."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayessparse.errors import ConfigError
from bayessparse.sparsifier import sparsify
from tests.test_sparsifier import Tiny, _data


def _refused(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _trained(method: str = "rigl", steps: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    options = {"drop_rate": 0.1} if method == "cigl" else {}
    sparsifier = sparsify(model, optimizer, method, sparsity=0.8, total_steps=20, update_interval=2, seed=seed,
                          **options)
    x, y = _data()
    for t in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with sparsifier.forward():
            F.cross_entropy(model(x[t * 16:t * 16 + 16]), y[t * 16:t * 16 + 16]).backward()
        sparsifier.step()
    return model, sparsifier


def _snapshot(sparsifier):
    return sparsifier.t, sparsifier.epoch, {n: m.clone() for n, m in sparsifier.masks.items()}


def _unchanged(sparsifier, snapshot) -> bool:
    t, epoch, masks = snapshot
    return (sparsifier.t, sparsifier.epoch) == (t, epoch) and all(
        torch.equal(masks[n], sparsifier.masks[n]) for n in masks)


# ---------------------------------------------------------------- the optimizer holds the prunable weights

def test_an_optimizer_over_another_models_weights_is_refused_before_pruning():
    model, other = Tiny(), Tiny()
    before = copy.deepcopy(model.state_dict())
    message = _refused("optimizer does not hold 3 of the model's 3 prunable weights", sparsify, model,
                       torch.optim.Adam(other.parameters()), "rigl", total_steps=10)
    assert "'conv.weight', 'hidden.weight', 'head.weight'" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was pruned


def test_an_optimizer_over_the_last_layer_only_is_refused_and_names_the_weights_it_lacks():
    model = Tiny()
    message = _refused("optimizer does not hold 2 of the model's 3 prunable weights", sparsify, model,
                       torch.optim.SGD(model.head.parameters(), lr=0.1), "cigl", total_steps=10)
    assert "'conv.weight', 'hidden.weight'" in message and "head.weight" not in message


def test_a_long_list_of_weights_the_optimizer_lacks_is_cut_to_a_few_names_and_a_count():
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    optimizer = torch.optim.SGD(model[5].parameters(), lr=0.1)
    message = _refused("does not hold 5 of the model's 6", sparsify, model, optimizer, "rigl", total_steps=10)
    assert "'0.weight', '1.weight', '2.weight' and 2 more" in message and "'3.weight'" not in message


def test_an_optimizer_over_every_prunable_weight_in_several_groups_is_accepted_and_dense_is_not_checked():
    model = Tiny()
    groups = [{"params": [model.conv.weight, model.hidden.weight, model.head.weight], "weight_decay": 1e-4},
              {"params": [p for n, p in model.named_parameters() if not n.endswith("weight")]}]
    sparsifier = sparsify(model, torch.optim.SGD(groups, lr=0.1), "rigl", total_steps=10)
    assert set(sparsifier.masks) == {"conv.weight", "hidden.weight", "head.weight"}
    # the prunable weights must all be held: one missing from the groups is refused
    model = Tiny()
    _refused("does not hold 1 of the model's 3 prunable weights: 'hidden.weight'", sparsify, model,
             torch.optim.SGD([p for n, p in model.named_parameters() if n != "hidden.weight"], lr=0.1), "set",
             total_steps=10)
    # dense training makes nothing sparse: a partial optimizer is the user's plain PyTorch choice
    model = Tiny()
    assert sparsify(model, torch.optim.SGD(model.head.parameters(), lr=0.1), "dense", total_steps=10).masks == {}


# ---------------------------------------------------------------- frozen prunable weights

def test_frozen_prunable_weights_are_refused_up_front_naming_the_layers():
    model = Tiny()
    model.conv.weight.requires_grad_(False)
    model.hidden.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    message = _refused(r"frozen prunable weights \(requires_grad=False\), 2 of the model's 3", sparsify, model,
                       optimizer, "rigl", total_steps=10, update_interval=1)
    assert "'conv.weight', 'hidden.weight'" in message and "head.weight" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refused before pruning
    # frozen parameters that are not prunable (biases, norms) are fine
    model = Tiny()
    model.norm.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert len(sparsify(model, optimizer, "rigl", total_steps=10).masks) == 3


# ---------------------------------------------------------------- models without prunable weights

@pytest.mark.parametrize("method", ["rigl", "cigl", "static"])
@pytest.mark.parametrize("build", [lambda: nn.Sequential(nn.BatchNorm1d(4)), lambda: nn.Embedding(5, 4)],
                         ids=["batchnorm", "embedding"])
def test_a_model_without_prunable_weights_is_refused_in_one_line(method, build):
    model = build()
    message = _refused("has no prunable weights \\(conv / linear weights", sparsify, model,
                       torch.optim.SGD(model.parameters(), lr=0.1), method, total_steps=10)
    assert f"method '{method}'" in message and "density" not in message


def test_dense_training_of_a_model_without_prunable_weights_is_accepted_but_a_sparse_method_is_not():
    model = nn.Sequential(nn.BatchNorm1d(4))
    assert sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "dense", total_steps=10).masks == {}
    _refused("no prunable weights", sparsify, model, torch.optim.SGD(model.parameters(), lr=0.1), "set",
             total_steps=10)


# ---------------------------------------------------------------- load_state_dict

@pytest.mark.parametrize("entry", ["t", "epoch", "method"])
def test_a_missing_state_entry_is_named_and_nothing_is_loaded(entry):
    _, source = _trained()
    state = source.state_dict()
    del state[entry]
    _, target = _trained(steps=0, seed=1)
    snapshot = _snapshot(target)
    _refused(f"lacks entry '{entry}'", target.load_state_dict, state)
    assert _unchanged(target, snapshot)


def test_an_empty_or_non_dict_state_is_refused_in_one_line():
    _, sparsifier = _trained(steps=0)
    _refused("lacks entry 't'", sparsifier.load_state_dict, {})
    _refused("state_dict\\(\\), got list", sparsifier.load_state_dict, [])


def test_an_unknown_state_entry_is_named():
    _, source = _trained()
    _, target = _trained(steps=0, seed=1)
    snapshot = _snapshot(target)
    _refused("unknown entry 'masks'", target.load_state_dict, {**source.state_dict(), "masks": source.masks})
    assert _unchanged(target, snapshot)


@pytest.mark.parametrize("entry, value, match", [
    ("t", "6", "entry 't' must be an integer >= 0, got '6'"),
    ("t", -1, "entry 't' must be an integer >= 0, got -1"),
    ("t", True, "entry 't' must be an integer"),
    ("epoch", 1.5, "entry 'epoch' must be an integer >= 0, got 1.5"),
    ("method", [1, 2], "entry 'method' must be a dict"),
    ("method_name", 3, "entry 'method_name' must be a method name, got 3"),
    ("generator", "seed", "entry 'generator' must be a generator state"),
    ("generator", torch.zeros(3, dtype=torch.uint8), "entry 'generator' is not a state of this generator"),
])
def test_a_mistyped_state_entry_is_named_and_nothing_is_loaded(entry, value, match):
    _, source = _trained()
    _, target = _trained(steps=0, seed=1)
    snapshot = _snapshot(target)
    generator = target.generator.get_state()
    _refused(match, target.load_state_dict, {**source.state_dict(), entry: value})
    assert _unchanged(target, snapshot) and torch.equal(target.generator.get_state(), generator)


def test_a_method_state_that_does_not_fit_the_model_is_a_config_error_naming_the_method_entry():
    _, source = _trained()
    state = source.state_dict()
    state["method"]["masks"] = {"masks": {"conv.weight": state["method"]["masks"]["masks"]["conv.weight"]}}
    _, target = _trained(steps=0, seed=1)
    _refused("entry 'method' does not load into method 'rigl': mask state names", target.load_state_dict, state)


@pytest.mark.parametrize("saved, loading", [("cigl", "rigl"), ("rigl", "cigl"), ("rigl", "set")])
def test_a_state_of_another_method_is_refused_naming_both(saved, loading):
    _, source = _trained(saved)
    state = source.state_dict()
    assert state["method_name"] == saved
    _, target = _trained(loading, steps=0, seed=1)
    snapshot = _snapshot(target)
    _refused(f"saved by method '{saved}', this sparsifier runs method '{loading}'", target.load_state_dict, state)
    assert _unchanged(target, snapshot)


def test_an_older_state_without_the_method_name_loads_and_is_still_checked_by_its_entries():
    _, source = _trained("rigl")
    old = {k: v for k, v in source.state_dict().items() if k != "method_name"}
    _, target = _trained("rigl", steps=0, seed=1)
    target.load_state_dict(old)
    assert target.t == source.t and all(torch.equal(source.masks[n], target.masks[n]) for n in source.masks)

    _, cigl = _trained("cigl")
    old_cigl = {k: v for k, v in cigl.state_dict().items() if k != "method_name"}
    _refused("entry 'method' has 'average', 'random_mask', 't', which method 'rigl' does not save",
             target.load_state_dict, old_cigl)
    _, cigl_target = _trained("cigl", steps=0, seed=1)
    _refused("entry 'method' lacks 'average', 'random_mask', 't', which method 'cigl' saves",
             cigl_target.load_state_dict, old)
