"""Iterative magnitude pruning with rewinding (bayessparse.workflows.imp) and the `bayessparse imp` command."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bayessparse.cli import main
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.files import load_torch
from bayessparse.sparsity.density import prunable_weights
from bayessparse.workflows.imp import (
    IMPSettings,
    _train,
    dense_masks,
    excluded_layers,
    global_magnitude_prune,
    imp,
    kl_to_truth,
    output_layer,
    resolve_settings,
    round_half_up,
    start_round,
    survivors_after,
)
from bayessparse.predict import predict_logits, predict_probs
from bayessparse.train import build_run, fit, load_data, train_epoch
from bayessparse.uncertainty.metrics import summary

TINY = {"data": "synthetic", "model": "mlp", "epochs": 2, "label_noise": 0.2, "n_samples": 300, "batch_size": 64}
PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = {"round", "density", "nonzero", "test_error", "nll", "ece", "brier", "accuracy", "mean_confidence",
          "train_error", "kl_clean", "kl_noisy", "train_seconds"}


def _random_layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = {"a.weight": torch.randn(7, 5, generator=g), "b.weight": torch.randn(4, 7, generator=g),
               "head.weight": torch.randn(3, 4, generator=g) * 1e-6}  # tiny: it would go first were it prunable
    masks = {n: torch.rand(w.shape, generator=g) > 0.3 for n, w in weights.items()}
    masks["head.weight"][:] = True
    return weights, masks


def _brute_force_pruned(weights, masks, names, k):
    """Flat positions (over the concatenation of ``names``) of the k smallest |w| among the survivors."""
    mags = np.concatenate([weights[n].abs().numpy().ravel() for n in names])
    alive = np.concatenate([masks[n].numpy().ravel() for n in names])
    idx = np.flatnonzero(alive)
    return set(idx[np.argsort(mags[idx], kind="stable")[:k]].tolist())


# ---------------------------------------------------------------------------------------------- pruning
def test_global_prune_removes_exactly_the_smallest_surviving_weights():
    weights, masks = _random_layers()
    names = ["a.weight", "b.weight"]
    survivors = sum(int(masks[n].sum()) for n in names)
    k = round_half_up(0.2 * survivors)
    assert k == math.floor(0.2 * survivors + 0.5) > 0
    new = global_magnitude_prune(weights, masks, 0.2, exclude={"head.weight"})
    assert sum(int(new[n].sum()) for n in names) == survivors - k  # exactly k removed
    before = torch.cat([masks[n].flatten() for n in names])
    after = torch.cat([new[n].flatten() for n in names])
    assert not (after & ~before).any()  # already pruned stay pruned
    removed = set(torch.nonzero(before & ~after).squeeze(1).tolist())
    assert removed == _brute_force_pruned(weights, masks, names, k)
    # one global threshold: every removed |w| <= every kept |w|
    mags = torch.cat([weights[n].abs().flatten() for n in names])
    assert mags[before & ~after].max() <= mags[after].min()
    assert torch.equal(new["head.weight"], masks["head.weight"])  # excluded layer untouched
    # the output layer is pruned like the others when it is not excluded (its weights are the smallest)
    with_head = global_magnitude_prune(weights, masks, 0.2)
    k_all = round_half_up(0.2 * (survivors + 12))
    assert k_all <= 12 and int((~with_head["head.weight"]).sum()) == k_all
    assert all(torch.equal(with_head[n], masks[n]) for n in names)


def test_prune_ties_are_broken_by_position_and_count_is_exact():
    weights = {"a.weight": torch.ones(2, 3), "b.weight": -torch.ones(4)}
    masks = {"a.weight": torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool),
             "b.weight": torch.ones(4, dtype=torch.bool)}
    new = global_magnitude_prune(weights, masks, count=3)
    assert new["a.weight"].tolist() == [[False, False, False], [False, True, True]]
    assert new["b.weight"].all()
    half = global_magnitude_prune(weights, masks, 0.5)  # round(0.5 * 9) = 5 (halves up): all of layer a
    assert not half["a.weight"].any() and half["b.weight"].all()
    assert global_magnitude_prune(weights, masks, count=6)["b.weight"].tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        global_magnitude_prune(weights, masks, count=10)


def test_density_after_r_rounds_is_0_8_to_the_r_by_count():
    for total in (1, 7, 97, 768, 4353, 66048):
        survivors = total
        for r in range(1, 16):
            target = survivors_after(total, 0.2, r)
            assert abs(target - 0.8**r * total) <= 0.5
            assert abs((survivors - target) - round_half_up(0.2 * survivors)) <= 1  # per round: 20 % of survivors
            survivors = target
    # and through the pruning itself, on real weights
    weights, masks = _random_layers(1)
    masks = {n: torch.ones_like(m) for n, m in masks.items()}
    total = 35 + 28
    for r in range(1, 8):
        alive = sum(int(masks[n].sum()) for n in ("a.weight", "b.weight"))
        masks = global_magnitude_prune(weights, masks, count=alive - survivors_after(total, 0.2, r),
                                       exclude={"head.weight"})
        alive = sum(int(masks[n].sum()) for n in ("a.weight", "b.weight"))
        assert abs(alive - 0.8**r * total) <= 0.5 and masks["head.weight"].all()


def test_output_layer_is_the_last_linear():
    run = build_run(resolve(TINY))
    assert output_layer(run.model) == "classifier.weight" == list(prunable_weights(run.model))[-1]
    assert excluded_layers(run.model, prune_output=False) == {"classifier.weight"}
    assert excluded_layers(run.model, prune_output=True) == set()


# ---------------------------------------------------------------------------------------------- rewinding
def test_rewind_restores_survivors_to_theta_and_zeroes_the_pruned():
    cfg = resolve(TINY)
    data = load_data(cfg)
    run0 = start_round(cfg, data)
    init = {k: v.clone() for k, v in build_run(cfg, data).model.state_dict().items()}
    model, rewind = _train(run0, rewind_epoch=0)
    assert all(torch.equal(rewind[k], init[k]) for k in init)  # rewind_epoch = 0: θ_rewind is the initialisation
    masks = global_magnitude_prune(prunable_weights(model), dense_masks(model), 0.2,
                                   exclude=excluded_layers(model, False))
    run1 = start_round(cfg, data, masks, rewind)
    state = run1.model.state_dict()
    for name, value in rewind.items():
        if name in masks:
            m = masks[name]
            assert torch.equal(state[name][m], value[m]) and (state[name][~m] == 0).all()
        else:
            assert torch.equal(state[name], value)  # biases rewound too
    assert run1.step == 0 and run1.epoch == 0 and not run1.optimizer.state  # fresh optimizer and schedule
    assert run1.scheduler.last_epoch == 0


def test_late_rewinding_keeps_the_weights_after_rewind_epoch():
    cfg = resolve(TINY, {"epochs": 3})
    data = load_data(cfg)
    reference = start_round(cfg, data)
    train_epoch(reference, progress=False)  # one epoch of the same run, same batches, same schedule
    model, rewind = _train(start_round(cfg, data), rewind_epoch=1)
    expected = reference.model.state_dict()
    assert all(torch.equal(rewind[k], expected[k]) for k in expected)
    assert not torch.equal(rewind["classifier.weight"], model.state_dict()["classifier.weight"])


def test_pruned_weights_stay_exactly_zero_through_retraining():
    cfg = resolve(TINY)
    data = load_data(cfg)
    model, rewind = _train(start_round(cfg, data), rewind_epoch=0)
    masks = dense_masks(model)
    for _ in range(3):  # density 0.512
        masks = global_magnitude_prune(prunable_weights(model), masks, 0.2, exclude={"classifier.weight"})
    run = start_round(cfg, data, masks, rewind)
    trained = fit(run, None, progress=False)
    for name, w in prunable_weights(trained).items():
        assert (w[~masks[name]] == 0).all()
        assert not torch.equal(w[masks[name]], rewind[name][masks[name]])  # and the survivors did train


# ---------------------------------------------------------------------------------------------- metrics
def test_kl_matches_brute_force_numpy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=6)
    p[0] = [0.0, 0.5, 0.5, 0.0]  # zero entries contribute 0
    logits = rng.normal(size=(6, 4)) * 3
    q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.mean([sum(pk * math.log(pk / qk) for pk, qk in zip(pn, qn) if pk > 0) for pn, qn in zip(p, q)])
    assert kl_to_truth(torch.tensor(p), torch.tensor(logits, dtype=torch.float32)) == pytest.approx(expected, rel=1e-6)
    assert kl_to_truth(torch.tensor(q), torch.tensor(logits)) == pytest.approx(0.0, abs=1e-12)


def _records_without_time(records):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def test_sweep_writes_one_record_per_round_and_resumes_to_the_same_result(tmp_path):
    cfg = resolve(TINY)
    records = imp(cfg, tmp_path / "full", IMPSettings(rounds=2), progress=False, echo=False)
    saved = json.loads((tmp_path / "full" / "imp.json").read_text())
    assert saved == json.loads(json.dumps(records)) and [r["round"] for r in saved] == [0, 1, 2]
    assert all(FIELDS <= set(r) for r in saved)
    model = build_run(cfg).model
    head = prunable_weights(model)["classifier.weight"].numel()
    total = sum(w.numel() for w in prunable_weights(model).values()) - head
    for r in saved:
        survivors = survivors_after(total, 0.2, r["round"])
        assert r["density"] == survivors / total
        assert r["nonzero"] == survivors + head  # counted from the weights: pruned ones are exactly 0
        assert r["nonzero_pruned"] == survivors
        assert r["test_error"] == pytest.approx(1 - r["accuracy"])
    assert (tmp_path / "full" / "double_descent.png").read_bytes()[:8] == PNG

    # round 0 is plain dense training: the same network as `bayessparse train --method dense`
    dense = build_run(cfg)
    probs, labels = predict_probs(fit(dense, None, progress=False), dense.data.test)
    assert summary(probs, labels) == {k: saved[0][k] for k in ("accuracy", "nll", "ece", "brier")}

    # the KL of the last round, recomputed from its saved network in numpy
    state = load_torch(tmp_path / "full" / "imp_state.pt")
    model.load_state_dict(state["model"])
    data = load_data(cfg)
    logits, labels = predict_logits(model, data.test)
    p = data.true_probs["test"].numpy()
    logq = torch.log_softmax(logits.double(), -1).numpy()
    noisy = 0.8 * p + 0.2 / 3
    assert saved[-1]["kl_clean"] == pytest.approx(np.mean(np.sum(p * (np.log(p) - logq), 1)), rel=1e-9)
    assert saved[-1]["kl_noisy"] == pytest.approx(np.mean(np.sum(noisy * (np.log(noisy) - logq), 1)), rel=1e-9)
    assert saved[-1]["test_error"] == pytest.approx(float((logits.argmax(-1) != labels).double().mean()))

    # an interrupted sweep (1 round) resumed to 2 rounds ends with the same records
    imp(cfg, tmp_path / "part", IMPSettings(rounds=1), progress=False, echo=False)
    with pytest.raises(ConfigError, match="--resume"):
        imp(cfg, tmp_path / "part", IMPSettings(rounds=2), progress=False, echo=False)
    with pytest.raises(ConfigError, match="prune_fraction"):
        imp(cfg, tmp_path / "part", IMPSettings(rounds=2, prune_fraction=0.5), resume=True, progress=False)
    resumed = imp(cfg, tmp_path / "part", IMPSettings(rounds=2), resume=True, progress=False, echo=False)
    assert _records_without_time(resumed) == _records_without_time(records)


def test_settings_are_validated():
    assert resolve_settings({"rounds": "3"}, {"prune_output": "yes"}) == IMPSettings(rounds=3, prune_output=True)
    for bad, needle in [({"rounds": 0}, "rounds"), ({"rounds": -2}, "rounds"),
                        ({"prune_fraction": 1.0}, "prune_fraction"), ({"rewind_epoch": 2}, "rewind_epoch"),
                        ({"pruning": 1}, "unknown imp setting"), ({"rounds": "many"}, "rounds")]:
        with pytest.raises(ConfigError, match=needle):
            resolve_settings(bad, epochs=2)


def test_experiment_config_is_valid():
    layer = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "imp_synthetic.yaml").read_text())
    settings = resolve_settings(layer.pop("imp"))
    cfg = resolve(layer)
    assert cfg.data == "synthetic" and cfg.label_noise == 0.2 and settings.rounds >= 8
    assert settings.rewind_epoch < cfg.epochs


# ---------------------------------------------------------------------------------------------- CLI
def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_sweep_writes_results_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, _ = _cli(capsys, "imp", "--data", "synthetic", "--model", "mlp", "--rounds", "2", "--epochs", "1",
                           "--label-noise", "0.2", "--set", "n_samples=300", "--out", str(out), "--no-progress")
    assert code == 0
    records = json.loads((out / "imp.json").read_text())
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [round(r["density"], 3) for r in records] == [1.0, 0.8, 0.64]
    assert (out / "double_descent.png").read_bytes()[:8] == PNG
    assert "| round |" in stdout and "kl clean" in stdout and "best round" in stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["imp"] == {"rounds": 2, "prune_fraction": 0.2, "rewind_epoch": 0, "prune_output": False}
    assert resolve({k: v for k, v in saved.items() if k != "imp"}).epochs == 1


@pytest.mark.parametrize(
    "flags,needle",
    [(["--rounds", "0"], "rounds"), (["--rounds", "-3"], "rounds"), (["--prune-fraction", "1.5"], "prune_fraction"),
     (["--rewind-epoch", "1"], "rewind_epoch"), (["--rounds", "80"], "would prune all")],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "sweep"
    code, _, stderr = _cli(capsys, "imp", "--data", "synthetic", "--model", "mlp", "--epochs", "1", *flags,
                           "--out", str(out), "--no-progress")
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("bayessparse: error:") and needle in stderr
    assert not out.exists()


def test_imp_refuses_the_pyro_engine(tmp_path):
    from bayessparse.config import resolve
    from bayessparse.errors import ConfigError
    from bayessparse.workflows.imp import IMPSettings, imp

    with pytest.raises(ConfigError, match="plain engine only"):
        imp(resolve({"data": "digits", "model": "mlp", "engine": "pyro", "epochs": 1}), tmp_path / "x", IMPSettings(rounds=1))
    assert not (tmp_path / "x").exists()
