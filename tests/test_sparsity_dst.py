"""Update schedule and the MaskUpdater inside a real (tiny) SGD / Adam training loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bayessparse.errors import ConfigError
from bayessparse.sparsity import (
    GradientGrow,
    MagnitudeDrop,
    MaskSet,
    MaskUpdater,
    RandomGrow,
    UCBGrow,
    UpdateSchedule,
    layer_densities,
    prunable_weights,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: intra-op threads only add contention (10x slower on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedule


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 5000),
    interval=st.integers(1, 300),
    alpha=st.floats(0.01, 1.0),
    end_fraction=st.floats(0.05, 1.0),
    t=st.integers(0, 6000),
)
def test_schedule_fraction_and_update_steps(total, interval, alpha, end_fraction, t):
    s = UpdateSchedule(total, interval=interval, alpha=alpha, end_fraction=end_fraction)
    t_end = int(end_fraction * total)
    assert s.t_end == t_end
    if t < t_end:
        assert s.fraction(t) == pytest.approx(alpha / 2 * (1 + math.cos(math.pi * t / t_end)), abs=1e-12)
        assert 0.0 <= s.fraction(t) <= alpha
    else:
        assert s.fraction(t) == 0.0
    assert s.is_update_step(t) == (t > 0 and t % interval == 0 and t < t_end)


def test_schedule_defaults_and_specific_values():
    s = UpdateSchedule(total_steps=1000)
    assert (s.interval, s.alpha, s.end_fraction, s.t_end) == (100, 0.3, 0.75, 750)
    assert [t for t in range(0, 1001) if s.is_update_step(t)] == [100, 200, 300, 400, 500, 600, 700]
    assert s.fraction(0) == pytest.approx(0.3)
    assert s.fraction(375) == pytest.approx(0.15)
    assert s.fraction(750) == 0.0 and s.fraction(800) == 0.0
    assert not s.is_update_step(0) and not s.is_update_step(750) and not s.is_update_step(150)
    with pytest.raises(Exception):
        s.interval = 5  # frozen


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"interval": 0}, "interval"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"end_fraction": 0.0}, "end_fraction"),
        ({"end_fraction": 1.2}, "end_fraction"),
        ({"total_steps": -1}, "total_steps"),
    ],
)
def test_schedule_validation(kwargs, field):
    args = {"total_steps": 100, **kwargs}
    with pytest.raises(ConfigError, match=field):
        UpdateSchedule(**args)


# ----------------------------------------------------------------------------- updater in a training loop


def cnn2d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def batch(model_kind: str, g: torch.Generator):
    x = torch.randn(16, 3, 8, 8, generator=g) if model_kind == "2d" else torch.randn(16, 2, 20, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y


def cnn1d() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv1d(2, 6, 5),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Conv1d(6, 12, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 16, 10),
    )


def build(model_fn, density=0.3, seed=0):
    model = model_fn()
    names = list(prunable_weights(model))
    shapes = {n: w.shape for n, w in prunable_weights(model).items()}
    dens = layer_densities("uniform", shapes, density)
    dens[names[0]] = 1.0  # a dense layer that must never be touched
    masks = MaskSet(model, dens, generator=gen(seed))
    return model, masks


def make_optimizer(kind, model):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)


def masked_entries_zero(masks: MaskSet, opt) -> bool:
    for n, w in masks.weights.items():
        off = masks.masks[n] == 0
        if (w.detach()[off] != 0).any():
            return False
        for v in opt.state.get(w, {}).values():
            if torch.is_tensor(v) and v.shape == w.shape and (v[off] != 0).any():
                return False
    return True


def run_loop(model, masks, updater, opt, steps, model_kind, data_gen, checks=True, t0=1):
    """RigL loop: dense gradient and no optimizer step on update steps."""
    log = []
    loss_fn = nn.CrossEntropyLoss()
    for t in range(t0, t0 + steps):
        x, y = batch(model_kind, data_gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if updater.is_update_step(t):
            dense_name = next(iter(masks.dense))
            dense_before = masks.weights[dense_name].detach().clone()
            old = {n: m.clone() for n, m in masks.masks.items()}
            stats = updater.update(t, opt)
            log.append((t, stats))
            if checks:
                assert stats["updated"] and stats["fraction"] == updater.schedule.fraction(t)
                total_changed = 0
                for n in masks.masks:
                    assert masks.nnz()[n] == masks.target_nnz[n]  # exact nnz after every update
                    changed = (old[n] != 0) != (masks.masks[n] != 0)
                    grown = (old[n] == 0) & (masks.masks[n] != 0)
                    w = masks.weights[n].detach()
                    assert torch.all(w[grown] == 0)  # grown weights start at 0
                    for v in opt.state[masks.weights[n]].values():
                        if torch.is_tensor(v) and v.shape == w.shape:
                            assert torch.all(v[grown] == 0)  # ... with zero momentum / moments
                    if n in masks.dense:
                        assert stats["layers"].get(n) is None and not changed.any()
                    else:
                        k = math.floor(stats["fraction"] * masks.target_nnz[n])
                        # each of the k drops either vacates a position (counted with its grow) or is regrown
                        assert int(changed.sum()) <= 2 * k
                        assert stats["layers"][n] >= int(changed.sum())
                        total_changed += stats["layers"][n]
                assert stats["changed"] == total_changed > 0
                assert torch.equal(masks.weights[dense_name].detach(), dense_before)
                assert torch.all(masks.masks[dense_name] == 1)
                assert masked_entries_zero(masks, opt)
        else:
            assert not updater.update(t, opt)["updated"]  # a no-op off the schedule
            masks.mask_grads_()
            opt.step()
            if checks:
                assert masked_entries_zero(masks, opt)  # masked weights exactly 0 after every step
    return log


@pytest.mark.parametrize("grow_cls", [RandomGrow, GradientGrow, UCBGrow])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("model_kind", ["2d", "1d"])
def test_updater_in_training_loop(grow_cls, opt_kind, model_kind):
    model, masks = build(cnn2d if model_kind == "2d" else cnn1d)
    opt = make_optimizer(opt_kind, model)
    sched = UpdateSchedule(total_steps=40, interval=4, alpha=0.5, end_fraction=0.75)
    updater = MaskUpdater(masks, sched, MagnitudeDrop(), grow_cls(), gen(1))
    assert updater.needs_dense_grad(4) == grow_cls.needs_gradient and not updater.needs_dense_grad(5)
    log = run_loop(model, masks, updater, opt, 30, model_kind, gen(2))
    assert [t for t, _ in log] == [4, 8, 12, 16, 20, 24, 28]
    assert all(s["changed"] > 0 for _, s in log)
    masks_at_end = {n: m.clone() for n, m in masks.masks.items()}
    # no change at or after t_end (= 30): run on to the end of training
    log_after = run_loop(model, masks, updater, opt, 15, model_kind, gen(3), t0=31)
    assert log_after == []
    for t in (30, 32, 36, 40, 100):
        assert updater.update(t, opt)["updated"] is False
    for n in masks.masks:
        assert torch.equal(masks.masks[n], masks_at_end[n])
    # training actually moved the active weights
    assert masks.density() == pytest.approx(masks.mask_density(), abs=0.02)


def test_update_does_not_touch_global_rng_and_resumes_exactly():
    sched = UpdateSchedule(total_steps=48, interval=4, alpha=0.4)
    model, masks = build(cnn2d)
    opt = make_optimizer("sgd", model)
    g = gen(5)
    updater = MaskUpdater(masks, sched, MagnitudeDrop(), UCBGrow(c=0.5), g)
    data = gen(6)
    run_loop(model, masks, updater, opt, 10, "2d", data, checks=False)
    # checkpoint at t = 10
    ckpt = {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "masks": masks.state_dict(),
        "updater": copy.deepcopy(updater.state_dict()),
        "gen": g.get_state(),
        "data": data.get_state(),
    }
    rng = torch.random.get_rng_state()
    run_loop(model, masks, updater, opt, 20, "2d", data, checks=False, t0=11)
    # the loop itself uses only explicit generators; torch.manual_seed is never needed to reproduce
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert updater.num_updates == 7 and updater.grow.rounds[masks.sparse_layers()[0]] == 7

    # resume into fresh objects
    model2, masks2 = build(cnn2d, seed=123)  # different initial masks, overwritten by the checkpoint
    model2.load_state_dict(ckpt["model"])
    opt2 = make_optimizer("sgd", model2)
    opt2.load_state_dict(ckpt["opt"])
    masks2.load_state_dict(ckpt["masks"])
    g2 = torch.Generator()
    g2.set_state(ckpt["gen"])
    data2 = torch.Generator()
    data2.set_state(ckpt["data"])
    updater2 = MaskUpdater(masks2, sched, MagnitudeDrop(), UCBGrow(c=0.5), g2)
    updater2.load_state_dict(ckpt["updater"])
    run_loop(model2, masks2, updater2, opt2, 20, "2d", data2, checks=False, t0=11)
    for n in masks.masks:
        assert torch.equal(masks.masks[n], masks2.masks[n])
        assert torch.equal(masks.weights[n], masks2.weights[n])
    assert updater2.num_updates == updater.num_updates


def test_optimizer_state_zeroed_at_grown_and_dropped_positions():
    lin = nn.Linear(10, 4, bias=False)
    masks = MaskSet(lin, {"weight": 0.5}, generator=gen(0))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin.weight.grad = torch.randn(4, 10, generator=gen(1))
    masks.mask_grads_()
    opt.step()
    buf = opt.state[lin.weight]["momentum_buffer"]
    buf.fill_(7.0)  # pretend stale momentum everywhere (also masked positions)
    old = masks.masks["weight"].clone()
    lin.weight.grad = torch.randn(4, 10, generator=gen(2))  # dense gradient
    sched = UpdateSchedule(100, interval=10, alpha=0.5)
    updater = MaskUpdater(masks, sched, MagnitudeDrop(), GradientGrow(), gen(3))
    stats = updater.update(10, opt)
    new = masks.masks["weight"]
    dropped = (old == 1) & (new == 0)
    grown = (old == 0) & (new == 1)
    k = math.floor(sched.fraction(10) * 20)
    assert k == 9 and int(dropped.sum()) == int(grown.sum()) <= k
    assert torch.all(buf[dropped | grown] == 0)
    untouched = ~(dropped | grown) & (old == 1) & (new == 1)
    # positions kept active keep their momentum unless they were dropped and regrown
    assert int((buf[untouched] == 7.0).sum()) + int((buf[untouched] == 0).sum()) == int(untouched.sum())
    # k grown positions plus the dropped ones that were not regrown (as many as the newly grown ones)
    assert stats["changed"] == stats["layers"]["weight"] == k + int(grown.sum())
    # the dense gradient is masked after the update, so an accidental step keeps masked weights at 0
    assert torch.all(lin.weight.grad[new == 0] == 0)


def test_ucb_updater_prefers_never_activated_positions():
    """Equal gradients everywhere: DST-EE must grow never-activated positions while any remain."""
    lin = nn.Linear(40, 1, bias=False)
    masks = MaskSet(lin, {"weight": 0.1}, generator=gen(0))  # 4 active of 40
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(1, 2, 40).view(1, 40) * masks.masks["weight"])
    sched = UpdateSchedule(1000, interval=10, alpha=0.5, end_fraction=1.0)
    ucb = UCBGrow(c=1.0)
    updater = MaskUpdater(masks, sched, MagnitudeDrop(), ucb, gen(1))
    ever_active = masks.masks["weight"].clone().bool()
    grew_total = 0
    for t in range(10, 110, 10):  # 10 updates of k <= 2: never-active positions (36) do not run out
        lin.weight.grad = torch.ones(1, 40)
        old = masks.masks["weight"].clone()
        updater.update(t, None)
        grown = (old == 0) & (masks.masks["weight"] == 1)
        assert not (grown & ever_active).any(), f"step {t}: regrew a previously active position"
        grew_total += int(grown.sum())
        ever_active |= masks.masks["weight"].bool()
        with torch.no_grad():  # give kept weights distinct magnitudes again
            lin.weight.add_(masks.masks["weight"] * torch.rand(1, 40, generator=gen(t)))
    assert grew_total >= 8 and int(ever_active.sum()) == 4 + grew_total
    # RigL with the same equal gradients has no such preference: over seeds it regrows old positions too
    regrew_old = False
    for seed in range(20):
        lin2 = nn.Linear(40, 1, bias=False)
        m2 = MaskSet(lin2, {"weight": 0.1}, generator=gen(0))
        with torch.no_grad():
            lin2.weight.copy_(torch.linspace(1, 2, 40).view(1, 40) * m2.masks["weight"])
        up2 = MaskUpdater(m2, sched, MagnitudeDrop(), GradientGrow(), gen(seed))
        ever = m2.masks["weight"].clone().bool()
        for t in range(10, 100, 10):
            lin2.weight.grad = torch.ones(1, 40)
            old = m2.masks["weight"].clone()
            up2.update(t, None)
            grown = (old == 0) & (m2.masks["weight"] == 1)
            regrew_old |= bool((grown & ever).any())
            ever |= m2.masks["weight"].bool()
    assert regrew_old


def test_updater_state_dict_contents():
    lin = nn.Linear(6, 5)
    masks = MaskSet(lin, {"weight": 0.4}, generator=gen(0))
    ucb = UCBGrow()
    updater = MaskUpdater(masks, UpdateSchedule(100, interval=5), MagnitudeDrop(), ucb, gen(0))
    initial = masks.masks["weight"].clone()
    lin.weight.grad = torch.randn(5, 6, generator=gen(1))
    updater.update(5, None)
    sd = updater.state_dict()
    assert sd["num_updates"] == 1 and sd["drop"] == {}
    assert torch.equal(sd["grow"]["counts"]["weight"], initial)  # observed the mask in force before the update
    assert not torch.equal(masks.masks["weight"], initial)
    assert sd["grow"]["rounds"] == {"weight": 1}
