"""Training is SVI: the ``--engine pyro`` step and the plain step produce the same weights.

Both engines are built from the same config and seed and fed their own (identical) data stream;
the Pyro engine's ``Z`` sites are conditioned on the plain loop's random masks (the engine
itself lets Pyro draw them from ``q(Z)``; tests/test_ppl_variational.py checks that draw);
after N steps, with several RigL mask updates (and CigL's random masks) on the way, the weights,
BatchNorm statistics, masks and momentum buffers are compared.

* Without weight decay the prior is flat and the two paths run the same floating-point
  operations: the results are bit-identical (``torch.equal``), for as many steps as we care to run.
* With weight decay the prior's gradient ``wd·W`` is added to the likelihood gradient by autograd
  (two roundings) where torch's SGD fuses it into one FMA: the paths differ in the last bit per
  step. ReLU / max-pool kinks eventually amplify such differences (after ~15-20 steps here), so
  the comparison runs a dozen steps, with a tolerance a thousand times below the weights' scale,
  and the masks must still be identical.
"""

import pytest
import torch

from bayessparse.batches import batches
from bayessparse.config import resolve
from bayessparse.ppl.svi import random_mask_draw
from bayessparse.train import build_run, load_data, train_step

MNIST1D = {"data": "mnist1d", "batch_size": 64, "lr": 0.05, "epochs": 3, "seed": 1, "device": "cpu"}


def _stream(run):
    while True:
        yield from batches(run.data.train, run.cfg.batch_size, shuffle=True, generator=run.generator)


def _run_both(cfg, steps):
    data = load_data(cfg)
    runs = {engine: build_run(cfg.replace(engine=engine), data) for engine in ("plain", "pyro")}
    random_mask = getattr(runs["pyro"].method, "random_mask", None)
    if random_mask is not None:  # the same Z as the plain loop: condition the guide's Z sites on its draws
        runs["pyro"].engine.svi.draw = random_mask_draw(random_mask, runs["pyro"].engine.model.weight_names)
    for run in runs.values():
        run.model.train()
        stream = _stream(run)
        for _ in range(steps):
            train_step(run, *next(stream))
    return runs["plain"], runs["pyro"]


def _momentum(run, param):
    state = run.optimizer.state.get(param)
    return None if not state else state.get("momentum_buffer")


def _max_abs_diff(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def _assert_same_structure(plain, pyro):
    if hasattr(plain.method, "masks"):
        for name, mask in plain.method.masks.masks.items():
            assert torch.equal(mask, pyro.method.masks.masks[name]), name
        assert plain.method.updater is None or plain.method.updater.num_updates == pyro.method.updater.num_updates


@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_same_seed_same_weights_bitwise_without_weight_decay(method, model):
    cfg = resolve(MNIST1D, {"model": model, "method": method, "weight_decay": 0.0, "update_interval": 7})
    plain, pyro = _run_both(cfg, steps=40)
    assert plain.method.updater.num_updates == 5
    _assert_same_structure(plain, pyro)
    for key, value in plain.model.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, pyro.model.state_dict()[key]), key
    for p_plain, p_pyro in zip(plain.model.parameters(), pyro.model.parameters()):
        m_plain, m_pyro = _momentum(plain, p_plain), _momentum(pyro, p_pyro)
        assert m_plain is not None and torch.equal(m_plain, m_pyro)
    if method == "cigl":  # the same random masks were drawn: both generators are at the same state
        assert torch.equal(plain.method.random_mask.generator.get_state(), pyro.method.random_mask.generator.get_state())


@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_same_seed_same_weights_with_weight_decay(method, model):
    cfg = resolve(MNIST1D, {"model": model, "method": method, "weight_decay": 5e-4, "update_interval": 3})
    plain, pyro = _run_both(cfg, steps=12)
    assert plain.method.updater.num_updates == 3
    _assert_same_structure(plain, pyro)
    assert _max_abs_diff(plain, pyro) < 2e-6  # weights are O(0.1-1); measured <= 3e-7


@pytest.mark.parametrize("method", ["dense", "static", "set", "dst-ee"])
def test_every_method_trains_identically(method):
    cfg = resolve({"data": "digits", "model": "cnn2d", "batch_size": 32, "lr": 0.05, "seed": 2,
                   "method": method, "weight_decay": 0.0, "update_interval": 4})
    plain, pyro = _run_both(cfg, steps=13)
    _assert_same_structure(plain, pyro)
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, pyro.model.state_dict()[key]), key
