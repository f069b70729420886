"""The drop-in API: a method inside the user's own loop, model and optimizer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayessparse
from bayessparse.errors import ConfigError
from bayessparse.sparsifier import Sparsifier, sparsify


class Tiny(nn.Module):
    """A user-defined model: a 1-D convolution, a hidden linear layer with a LayerNorm, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.hidden = nn.Linear(8 * 16, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x[:, None])).flatten(1)
        return self.head(F.relu(self.norm(self.hidden(h))))


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + (x[:, 5:8].sum(1) > 1).long()
    return x, y


def _train(sparsifier: Sparsifier, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, *,
           micro: int = 1, scaler=None, check=None) -> list[dict | None]:
    x, y = _data()
    stats = []
    for t in range(steps):
        optimizer.zero_grad(set_to_none=True)
        rows = torch.arange(t * 32, t * 32 + 32) % len(x)
        for part in rows.chunk(micro):
            with sparsifier.forward():
                loss = F.cross_entropy(model(x[part]), y[part]) / micro
                (scaler.scale(loss) if scaler is not None else loss).backward()
        stats.append(sparsifier.step(scaler))
        if check is not None:
            check(t, stats[-1])
    return stats


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_a_user_model_keeps_exact_nnz_and_zero_optimizer_state(opt):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                 "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
                 "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)}[opt](model.parameters())
    sparsifier = sparsify(model, optimizer, "rigl", sparsity=0.8, total_steps=40, update_interval=5)
    weights = {"conv.weight": model.conv.weight, "hidden.weight": model.hidden.weight, "head.weight": model.head.weight}
    assert set(sparsifier.masks) == set(weights)
    counts = {n: int(m.sum()) for n, m in sparsifier.masks.items()}
    assert sum(counts.values()) == pytest.approx(0.2 * sum(w.numel() for w in weights.values()), abs=3)
    updates = []

    def check(t, stats):
        for name, w in weights.items():
            mask = sparsifier.masks[name]
            assert int(torch.count_nonzero(w)) <= counts[name] and int(mask.sum()) == counts[name]
            assert bool((w[mask == 0] == 0).all()), (t, name)  # pruned weights exactly zero
            for key, value in optimizer.state[w].items():
                if torch.is_tensor(value) and value.shape == w.shape:
                    assert bool((value[mask == 0] == 0).all()), (t, name, key)  # and their optimizer state
        if stats is not None:
            updates.append(stats)

    before = {n: m.clone() for n, m in sparsifier.masks.items()}
    _train(sparsifier, model, optimizer, 40, check=check)
    assert len(updates) == 5 and sum(s["changed"] for s in updates) > 0  # updates at t = 5, 10, ..., 25 (T_end 0.75)
    assert any(not torch.equal(before[n], sparsifier.masks[n]) for n in before)


def test_grown_positions_start_with_zero_adam_moments():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = sparsify(model, optimizer, "rigl", sparsity=0.8, total_steps=40, update_interval=5)
    w = model.hidden.weight
    seen = []

    def check(t, stats):
        if stats is not None and not seen:
            grown = (sparsifier.masks["hidden.weight"] == 1) & (before == 0)
            state = optimizer.state[w]
            assert grown.any()
            assert bool((state["exp_avg"][grown] == 0).all()) and bool((state["exp_avg_sq"][grown] == 0).all())
            seen.append(t)
        before.copy_(sparsifier.masks["hidden.weight"])

    before = sparsifier.masks["hidden.weight"].clone()
    _train(sparsifier, model, optimizer, 12, check=check)
    assert seen == [5]


def test_the_trainer_step_is_the_sparsifier_step():
    """One implementation: the built-in trainer's plain step runs through a Sparsifier."""
    from bayessparse.config import resolve
    from bayessparse.train import build_run, train_step

    run = build_run(resolve({"data": "digits", "model": "mlp", "method": "cigl", "epochs": 1}))
    assert isinstance(run.sparsifier, Sparsifier) and run.sparsifier.method is run.method
    x, y = run.data.train.tensors
    train_step(run, x[:64], y[:64])
    train_step(run, x[64:128], y[64:128])
    assert run.step == run.sparsifier.t == 2


def test_gradient_accumulation_sees_one_random_mask_per_step():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = sparsify(model, optimizer, "cigl", sparsity=0.8, total_steps=20, drop_rate=0.3, update_interval=50)
    x, y = _data()
    for _ in range(3):
        optimizer.zero_grad()
        zeros = []
        for part in torch.arange(32).chunk(4):
            with sparsifier.forward():
                zeros.append(model.hidden.weight.detach() == 0)
                F.cross_entropy(model(x[part]), y[part]).backward()
        assert all(torch.equal(zeros[0], z) for z in zeros[1:])  # the same Z for every micro-batch
        dropped = int(zeros[0].sum()) - int((sparsifier.masks["hidden.weight"] == 0).sum())
        assert dropped > 0
        sparsifier.step()
    # and a new Z at the next step
    with sparsifier.forward():
        assert not torch.equal(model.hidden.weight.detach() == 0, zeros[0])


def test_a_grad_scaler_gives_the_unscaled_training_and_skips_an_overflowing_update():
    """Power-of-two loss scaling is exact in float32: the same masks and weights as without it."""
    runs = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = sparsify(model, optimizer, "rigl", sparsity=0.8, total_steps=30, update_interval=5)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaled else None
        _train(sparsifier, model, optimizer, 30, scaler=scaler)
        runs[scaled] = (model, sparsifier)
    for (name, a), b in zip(runs[False][0].named_parameters(), runs[True][0].parameters()):
        assert torch.equal(a, b), name
    assert all(torch.equal(runs[False][1].masks[n], runs[True][1].masks[n]) for n in runs[False][1].masks)

    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = sparsify(model, optimizer, "rigl", sparsity=0.8, total_steps=30, update_interval=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # the scaled loss overflows float32
    before = {n: m.clone() for n, m in sparsifier.masks.items()}
    stats = _train(sparsifier, model, optimizer, 1, scaler=scaler)
    assert stats == [None] and all(torch.equal(before[n], sparsifier.masks[n]) for n in before)
    assert scaler.get_scale() < 2.0 ** 127


def test_mixed_precision_autocast_keeps_the_sparsity():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = sparsify(model, optimizer, "cigl", sparsity=0.9, total_steps=30, update_interval=5)
    scaler = torch.amp.GradScaler("cpu")
    counts = {n: int(m.sum()) for n, m in sparsifier.masks.items()}
    x, y = _data()
    losses = []
    for t in range(30):
        optimizer.zero_grad()
        with sparsifier.forward(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x[:128]), y[:128])
        with sparsifier.forward():
            scaler.scale(loss).backward()
        sparsifier.step(scaler)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, mask in sparsifier.masks.items():
        weight = dict(model.named_parameters())[name]
        assert int(mask.sum()) == counts[name]
        assert bool((weight[mask == 0] == 0).all())


def test_state_dict_resumes_to_the_uninterrupted_run():
    def fresh():
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, optimizer, sparsify(model, optimizer, "cigl", sparsity=0.8, total_steps=20, update_interval=4)

    model, optimizer, sparsifier = fresh()
    _train(sparsifier, model, optimizer, 20)
    whole = copy.deepcopy(model.state_dict())

    model, optimizer, sparsifier = fresh()
    _train(sparsifier, model, optimizer, 10)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), sparsifier.state_dict(), torch.get_rng_state()))
    model, optimizer, sparsifier = fresh()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    sparsifier.load_state_dict(saved[2])
    torch.set_rng_state(saved[3])
    x, y = _data()
    for t in range(10, 20):  # the same batches as the uninterrupted run's steps 10..19
        optimizer.zero_grad(set_to_none=True)
        rows = torch.arange(t * 32, t * 32 + 32) % len(x)
        with sparsifier.forward():
            F.cross_entropy(model(x[rows]), y[rows]).backward()
        sparsifier.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, whole[name]), name


def test_the_package_exports_the_api_and_refuses_bad_input():
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert bayessparse.sparsify is sparsify and bayessparse.Sparsifier is Sparsifier
    with pytest.raises(ConfigError, match="unknown option 'droprate'"):
        sparsify(model, optimizer, "cigl", total_steps=10, droprate=0.1)
    with pytest.raises(ConfigError, match="sparsity"):
        sparsify(model, optimizer, "rigl", sparsity=1.5, total_steps=10)
    with pytest.raises(ConfigError, match="total_steps"):
        sparsify(model, optimizer, "rigl", total_steps=0)
    with pytest.raises(ConfigError, match="SVI"):
        sparsify(model, optimizer, "vcigl", total_steps=10)
    with pytest.raises(ConfigError, match="unknown method"):
        sparsify(model, optimizer, "lottery", total_steps=10)
    with pytest.raises(ConfigError, match="optimizer"):
        sparsify(model, model.parameters(), "rigl", total_steps=10)
