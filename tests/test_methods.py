"""The sparse methods inside the real training loop: CigL's two masks, exact resume, end-to-end accuracy."""

import copy

import pytest
import torch

import bayessparse.train as train_module
from bayessparse.config import resolve
from bayessparse.files import load_torch
from bayessparse.methods import METHODS
from bayessparse.train import build_run, fit, measured_density, train, train_step

SPARSE = ("static", "set", "rigl", "dst-ee", "cigl")
DIGITS = {"data": "digits", "model": "cnn2d", "sparsity": 0.8, "batch_size": 32, "lr": 0.05, "update_interval": 10}


def _batches(run, n):
    x, y = run.data.train.tensors
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        idx = torch.randint(len(y), (32,), generator=g)
        yield x[idx], y[idx]


def test_every_method_is_registered():
    assert set(SPARSE) | {"dense"} <= set(METHODS)


def test_cigl_kept_fraction_matches_drop_rate():
    for drop_rate in (0.1, 0.3):
        run = build_run(resolve(DIGITS, {"method": "cigl", "drop_rate": drop_rate}))
        rm = run.method.random_mask
        kept = active = 0
        for _ in range(200):
            z = rm.sample()
            kept += sum(int(k.sum()) for k in z)
            active += sum(int(m.sum()) for m in run.method.masks.masks.values())
        assert kept / active == pytest.approx(1 - drop_rate, abs=0.005)


def test_cigl_step_trains_only_kept_weights_on_thinned_forward():
    run = build_run(resolve(DIGITS, {"method": "cigl", "drop_rate": 0.3, "weight_decay": 1e-3}))
    method = run.method
    for x, y in _batches(run, 3):  # build up momentum first
        train_step(run, x, y)
    before = {n: w.detach().clone() for n, w in method.masks.weights.items()}
    seen = {}
    hook = run.model.register_forward_pre_hook(
        lambda mod, args: seen.update({n: w.detach().clone() for n, w in method.masks.weights.items()})
    )
    x, y = next(_batches(run, 1))
    train_step(run, x, y)
    hook.remove()
    for (name, w), kept in zip(method.masks.weights.items(), method.random_mask.kept_masks()):
        dropped = kept == 0
        assert torch.equal(w.detach()[dropped], before[name][dropped]), name  # momentum + decay did not move them
        assert torch.equal(seen[name], before[name] * kept), name  # the forward saw Z ⊙ M ⊙ W
        active_kept = (kept == 1) & (method.masks.masks[name] == 1)
        assert (w.detach()[active_kept] != before[name][active_kept]).float().mean() > 0.9
        assert torch.all(w.detach()[method.masks.masks[name] == 0] == 0)


def test_cigl_averaged_model_keeps_mask_and_recalibrates_batchnorm():
    run = build_run(resolve(DIGITS, {"method": "cigl", "epochs": 3}))
    final = fit(run, progress=False)
    assert final is not run.model and run.method.average.count >= 1
    names = list(run.method.masks.weights)
    for name, w in zip(names, (dict(final.named_parameters())[n] for n in names)):
        assert torch.equal(w.detach() != 0, run.method.masks.masks[name] != 0), name
    bn_final = [m for m in final.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    bn_avg = [m for m in run.method.average.average.module.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert not torch.allclose(bn_final.running_mean, bn_avg.running_mean)


def test_cigl_sampled_snapshots_drop_part_of_the_mask():
    """With one sampled snapshot, about drop_rate of the active weights are zero in the average."""
    cfg = resolve(DIGITS, {"method": "cigl", "epochs": 1, "drop_rate": 0.3})
    run = build_run(cfg)
    run.method.average.snapshot = "sampled"
    final = fit(run, progress=False)
    masks = run.method.masks
    lost = sum(int(((dict(final.named_parameters())[n] == 0) & (m == 1)).sum()) for n, m in masks.masks.items())
    assert lost / sum(masks.nnz().values()) == pytest.approx(0.3, abs=0.03)


def test_cigl_short_run_still_averages():
    run = build_run(resolve(DIGITS, {"method": "cigl", "epochs": 1, "averaging_start": 0.99}))
    final = fit(run, progress=False)
    assert run.method.average.count == 1 and final is not run.model


def test_drop_rate_changes_training():
    weights = []
    for drop_rate in (0.0, 0.2):
        run = build_run(resolve(DIGITS, {"method": "cigl", "drop_rate": drop_rate}))
        for x, y in _batches(run, 5):
            train_step(run, x, y)
        weights.append(torch.cat([w.detach().flatten() for w in run.method.masks.weights.values()]))
    assert not torch.allclose(weights[0], weights[1])


@pytest.mark.parametrize("method", ["dense", *SPARSE])
def test_resume_from_a_middle_checkpoint_is_exact(tmp_path, method, monkeypatch):
    cfg = resolve(DIGITS, {"method": method, "epochs": 3})
    saved = []
    real_save = train_module.save_torch
    monkeypatch.setattr(train_module, "save_torch", lambda path, obj: (saved.append(copy.deepcopy(obj)), real_save(path, obj)))
    train(cfg, tmp_path / "full", progress=False)
    middle = next(s for s in saved if s["epoch"] == 1)
    monkeypatch.setattr(train_module, "save_torch", real_save)
    (tmp_path / "resumed").mkdir()
    real_save(tmp_path / "resumed" / "checkpoint.pt", middle)
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_torch(tmp_path / "full" / "checkpoint.pt"), load_torch(tmp_path / "resumed" / "checkpoint.pt")
    for key in a["final_model"]:
        assert torch.equal(a["final_model"][key], b["final_model"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("method", SPARSE)
def test_end_to_end_mnist1d_at_90_percent_sparsity(tmp_path, method):
    metrics = train(resolve({"data": "mnist1d", "model": "cnn1d", "method": method, "sparsity": 0.9, "epochs": 10}),
                    tmp_path / method, progress=False)
    assert metrics["accuracy"] >= 0.80
    assert metrics["density"] == pytest.approx(0.10, abs=0.001)


def test_density_measured_from_weights_of_a_sparse_run():
    run = build_run(resolve(DIGITS, {"method": "rigl"}))
    for x, y in _batches(run, 25):  # crosses updates at steps 10 and 20
        train_step(run, x, y)
    masks = run.method.masks
    assert measured_density(run.model) == pytest.approx(masks.mask_density(), abs=1e-3)
    for name, w in masks.weights.items():
        assert int(masks.masks[name].sum()) == masks.target_nnz[name]
        assert torch.all(w.detach()[masks.masks[name] == 0] == 0)
