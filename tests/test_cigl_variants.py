"""CigL's baseline and ablation: RigL + weight dropout (rigl-wdp) and prediction averaging (cigl-pa).

Also CigL's per-epoch validation history, which measures the model the run would output.
One tiny MNIST-1D cnn1d config (BatchNorm present, so re-estimation matters); a large drop rate
makes the ``p`` scaling visible in the linear head.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bayessparse.config import resolve
from bayessparse.workflows.ensembles import EDSTPlan, ensemble
from bayessparse.errors import ConfigError
from bayessparse.predict import predict_probs
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.prediction_average import SnapshotEnsemble
from bayessparse.train import build_run, fit, load_finished, recalibrate_batchnorm, train
from bayessparse.uncertainty.metrics import summary

TINY = {"data": "mnist1d", "n_samples": 600, "model": "cnn1d", "sparsity": 0.8, "batch_size": 64,
        "update_interval": 5, "drop_rate": 0.2, "epochs": 5, "averaging_start": 0.6}
KEEP = 1 - TINY["drop_rate"]


def _fit(overrides):
    run = build_run(resolve(TINY, overrides))
    return run, fit(run, progress=False)


def _epoch_end_steps(run):
    return [e * run.steps_per_epoch for e in range(1, run.cfg.epochs + 1)]


def _test_x(run):
    return run.data.test.tensors[0]


@pytest.fixture(scope="module")
def cigl():
    return _fit({"method": "cigl"})


@pytest.fixture(scope="module")
def cigl_pa(tmp_path_factory):
    """A cigl-pa run written by ``train`` and reloaded: (run, final model, metrics.json, folder)."""
    out = tmp_path_factory.mktemp("cigl-pa") / "run"
    metrics = train(resolve(TINY, {"method": "cigl-pa"}), out, progress=False)
    run, final = load_finished(out)
    return run, final, metrics, out


@pytest.fixture(scope="module")
def one_snapshot():
    """rigl-wdp (CigL that averages the last epoch only, whatever the configured averaging_start) and cigl-pa
    with averaging_start=1: one snapshot each, the last iterate."""
    return _fit({"epochs": 2, "method": "rigl-wdp"}), _fit({"epochs": 2, "method": "cigl-pa", "averaging_start": 1.0})


# ----------------------------------------------------------------------------- rigl-wdp


def test_rigl_wdp_outputs_p_times_last_iterate_with_reestimated_batchnorm(one_snapshot):
    (run, final), _ = one_snapshot
    assert run.cfg.averaging_start == TINY["averaging_start"] < 1  # the method averages the last epoch anyway
    assert run.method.averaging_step == run.step and run.method.average.count == 1
    trained, out = prunable_weights(run.model), prunable_weights(final)
    assert list(trained) == list(out)
    for name in trained:
        assert torch.equal(out[name].detach(), KEEP * trained[name].detach()), name
    bns = [(a, b) for a, b in zip(run.model.modules(), final.modules()) if isinstance(a, torch.nn.BatchNorm1d)]
    assert bns
    for bn_run, bn_final in bns:
        assert not torch.allclose(bn_run.running_mean, bn_final.running_mean)
        assert not torch.allclose(bn_run.running_var, bn_final.running_var)
    # re-estimated on the training set: exactly what recalibrating p·W gives
    expected = copy.deepcopy(run.model)
    with torch.no_grad():
        torch._foreach_mul_(list(prunable_weights(expected).values()), KEEP)
    recalibrate_batchnorm(run, expected)
    for (_, a), (_, b) in zip(expected.named_buffers(), final.named_buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_rigl_wdp_ignores_the_configured_averaging_start():
    run = build_run(resolve(TINY, {"method": "rigl-wdp", "averaging_start": 0.2}))
    assert run.method.averaging_step == run.cfg.epochs * run.steps_per_epoch


# ----------------------------------------------------------------------------- cigl-pa


def test_cigl_pa_trains_exactly_like_cigl(cigl, cigl_pa):
    (run, _), (run_pa, _, _, _) = cigl, cigl_pa
    assert run.step == run_pa.step and run.method.averaging_step == run_pa.method.averaging_step
    a, b = run.model.state_dict(), run_pa.model.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name, mask in run.method.masks.masks.items():
        assert torch.equal(mask, run_pa.method.masks.masks[name]), name


def test_cigl_pa_has_one_member_per_averaged_epoch(cigl_pa):
    run, final, _, _ = cigl_pa
    expected = sum(step >= run.method.averaging_step for step in _epoch_end_steps(run))
    assert expected >= 2  # the config must average more than one epoch for this test to mean something
    assert isinstance(final, SnapshotEnsemble) and len(final.members) == expected
    assert len(run.method.snapshots) == expected
    # the last member is p·W of the last iterate; all members differ
    last = prunable_weights(final.members[-1])
    for name, w in prunable_weights(run.model).items():
        assert torch.equal(last[name].detach(), KEEP * w.detach()), name
    for i, snapshot in enumerate(run.method.snapshots):
        member = prunable_weights(final.members[i])
        for name in member:
            assert torch.equal(member[name].detach(), KEEP * snapshot[name]), (i, name)
    first, second = (prunable_weights(m) for m in final.members[:2])
    assert not all(torch.equal(first[n], second[n]) for n in first)


def test_cigl_pa_forward_is_the_log_of_the_mean_member_probability(cigl_pa):
    _, final, _, _ = cigl_pa
    x = _test_x(cigl_pa[0])[:50]
    with torch.no_grad():
        manual = torch.stack([F.softmax(m(x), dim=-1) for m in final.members]).mean(0).log()
        single = [F.softmax(m(x), dim=-1) for m in final.members]
        got = final(x)
    assert torch.allclose(got, manual, atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(len(x)), atol=1e-5)
    assert not torch.allclose(single[0], single[-1], atol=1e-3)  # a real average of different predictions


def test_cigl_pa_averages_the_same_snapshots_cigl_averages(cigl, cigl_pa):
    """mean_k p·W_k over the members = CigL's weight average (same snapshots, same p)."""
    (_, final), (_, final_pa, _, _) = cigl, cigl_pa
    averaged = prunable_weights(final)
    members = [prunable_weights(m) for m in final_pa.members]
    for name, w in averaged.items():
        mean = torch.stack([m[name].detach() for m in members]).mean(0)
        assert torch.allclose(w.detach(), mean, atol=1e-6), name


def test_one_snapshot_prediction_average_equals_weight_average(one_snapshot):
    (run, weight_avg), (run_pa, pred_avg) = one_snapshot
    assert isinstance(pred_avg, SnapshotEnsemble) and len(pred_avg.members) == 1
    for key, value in run.model.state_dict().items():  # same trajectory
        assert torch.equal(value, run_pa.model.state_dict()[key]), key
    probs, labels = predict_probs(weight_avg, run.data.test)
    probs_pa, labels_pa = predict_probs(pred_avg, run_pa.data.test)
    assert torch.equal(labels, labels_pa)
    assert torch.allclose(probs, probs_pa, atol=1e-5)
    # the comparison can tell: the unscaled last iterate (BatchNorm re-estimated too) predicts differently
    unscaled = copy.deepcopy(run_pa.model)
    recalibrate_batchnorm(run_pa, unscaled)
    probs_unscaled, _ = predict_probs(unscaled, run_pa.data.test)
    assert (probs_unscaled - probs_pa).abs().max() > 1e-2


def test_cigl_pa_run_folder_reloads_to_the_reported_predictions(cigl_pa):
    run, final, metrics, out = cigl_pa
    assert isinstance(final, SnapshotEnsemble) and not final.training
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "cigl-pa"
    assert saved["density"] == pytest.approx(run.method.masks.mask_density(), abs=1e-3)  # the members' shared mask
    probs, labels = predict_probs(final, run.data.test, run.cfg.eval_batch_size)
    got = summary(probs, labels, n_bins=run.cfg.ece_bins)
    assert got["accuracy"] == saved["accuracy"] == metrics["accuracy"]
    assert got["nll"] == pytest.approx(saved["nll"], abs=1e-9)
    assert got["ece"] == pytest.approx(saved["ece"], abs=1e-9)
    val = summary(*predict_probs(final, run.data.val, run.cfg.eval_batch_size), n_bins=run.cfg.ece_bins)
    assert val["accuracy"] == saved["val_accuracy"]
    # the last validation entry measured this same prediction average
    assert saved["history"][-1]["val_accuracy"] == saved["val_accuracy"]
    assert saved["history"][-1]["val_nll"] == pytest.approx(saved["val_nll"], abs=1e-9)


def test_edst_refuses_cigl_pa(tmp_path):
    cfg = resolve(TINY, {"method": "cigl-pa"})
    with pytest.raises(ConfigError, match="cigl-pa"):
        EDSTPlan.from_config(cfg, members=2)
    with pytest.raises(ConfigError, match="cigl-pa"):
        ensemble(cfg, "edst", 2, tmp_path / "edst", progress=False)
    assert not (tmp_path / "edst").exists()  # refused before anything was written
    EDSTPlan.from_config(resolve(TINY, {"method": "cigl"}), members=2)  # cigl itself is fine


# ----------------------------------------------------------------------------- CigL's validation history


def test_cigl_history_measures_the_model_the_run_outputs(cigl):
    run, final = cigl
    assert len(run.history) == run.cfg.epochs
    assert run.method.average.count == sum(s >= run.method.averaging_step for s in _epoch_end_steps(run))
    val = summary(*predict_probs(final, run.data.val, run.cfg.eval_batch_size), n_bins=run.cfg.ece_bins)
    last = run.history[-1]
    assert last["val_accuracy"] == pytest.approx(val["accuracy"], abs=1e-9)
    assert last["val_nll"] == pytest.approx(val["nll"], abs=1e-9)
    assert all(math.isfinite(h["val_nll"]) for h in run.history)
