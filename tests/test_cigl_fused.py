"""CigL with ``fused_mask``: Z drawn by the fused kernel's generator (here its bit-exact PyTorch twin on CPU).

The kernel itself is tested in ``test_fused_mask.py``; these tests check the method's wiring: which
step's seeds are used, that a dropped weight does not move in its step, that RigL's update still
sees the dense gradient, and that a run is reproducible and resumable from its step counter.
"""

import copy

import torch

from bayessparse.config import resolve
from bayessparse.kernels.fused_mask import draw_keep, layer_seed
from bayessparse.train import build_run, train_epoch, train_step

CFG = {"data": "digits", "model": "mlp", "method": "cigl", "drop_rate": 0.2, "update_interval": 3, "batch_size": 256,
       "epochs": 2, "fused_mask": True}


def fused_run():
    run = build_run(resolve(CFG))
    assert run.method.fused is False  # no CUDA here: the eager path is the default ...
    run.method.fused = True  # ... and the test forces the fused path onto the CPU reference generator
    return run


def test_a_dropped_weight_keeps_its_value_in_its_step_and_kept_ones_move():
    run = fused_run()
    x, y = (t[:256] for t in run.data.train.tensors)
    before = {n: w.detach().clone() for n, w in run.method.masks.weights.items()}
    assert not run.method.wants_update(0)
    train_step(run, x, y)
    for layer, (name, w) in enumerate(run.method.masks.weights.items()):
        keep = draw_keep(layer_seed(run.method.seed, 0, layer), w.shape, 0.8, w.device)
        active = run.method.masks.masks[name].bool()
        assert torch.equal(w.detach()[~keep & active], before[name][~keep & active]), name
        moved = (w.detach() != before[name]) & active
        assert moved[keep & active].float().mean() > 0.9, name
    assert run.method.t == run.step == 1


def test_fused_cigl_is_reproducible_and_updates_its_mask():
    a, b = fused_run(), fused_run()
    masks0 = {n: m.clone() for n, m in a.method.masks.masks.items()}
    train_epoch(a, progress=False)
    train_epoch(b, progress=False)
    assert a.method.updater.num_updates >= 1 and a.method.t == a.step
    assert any(not torch.equal(m, masks0[n]) for n, m in a.method.masks.masks.items())  # the mask moved
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], tensor), name


def test_fused_cigl_resumes_from_its_step_counter():
    a = fused_run()
    train_epoch(a, progress=False)
    state = copy.deepcopy(a.state_dict())  # the live tensors move on with `a`
    train_epoch(a, progress=False)
    b = fused_run()
    b.load_state_dict(state)
    assert b.method.t == b.step
    train_epoch(b, progress=False)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], tensor), name
