"""SV-DKL: a GP on the features of the dataset's network, trained and predicted by the deep GPs' code."""

from __future__ import annotations

import math

import pytest
import torch

from bayessparse.baselines import DeepGPConfig, load_deep_gp, train_deep_gp
from bayessparse.baselines import gp_training as G
from bayessparse.baselines.deep_kernel import DeepKernelGP
from bayessparse.errors import ConfigError


def _fit(cfg: DeepGPConfig) -> G.GPRun:
    run = G.build_gp_run(cfg)
    G.fit(run, progress=False, validate=False)
    return run


def test_svdkl_learns_digits_where_its_untrained_start_is_at_chance():
    cfg = DeepGPConfig(method="svdkl", data="digits", epochs=8, eval_samples=8)
    run = G.build_gp_run(cfg)
    before, _ = G.scores(run, run.data.val)
    assert isinstance(run.model, DeepKernelGP) and before["accuracy"] < 0.3
    run = _fit(cfg)
    after, _ = G.scores(run, run.data.val)
    assert after["accuracy"] > 0.5 and after["nll"] < 0.6 * before["nll"]  # chance: 0.1


def test_the_trunk_is_the_named_network_and_trains_at_its_own_rate():
    cfg = DeepGPConfig(method="svdkl", data="digits", trunk="mlp", trunk_lr=0.001, lr=0.02, num_inducing=16)
    run = G.build_gp_run(cfg)
    trunk = {id(p) for p in run.model.trunk.parameters()}
    rates = {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}
    assert {rates[i] for i in trunk} == {0.001}
    assert {rate for i, rate in rates.items() if i not in trunk} == {0.02}
    assert len(rates) == len(list(run.model.parameters()))  # every parameter trains, once
    last = [m for m in run.model.trunk.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == cfg.hidden_dims  # the network's head resized to the GP's input features


def test_a_finished_svdkl_run_loads_back_with_the_same_predictions(tmp_path):
    cfg = DeepGPConfig(method="svdkl", data="diabetes", trunk="mlp", epochs=2, num_inducing=16, eval_samples=4)
    metrics = train_deep_gp(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(metrics["nll"]) and 0 <= metrics["coverage_90"] <= 1
    assert metrics["model"] == "svdkl-mlp-h10-m16"
    predictor = load_deep_gp(tmp_path / "run")
    mean, variance = predictor(predictor_data := G.check_deep_gp_data(cfg).test)
    again, _ = predictor(predictor_data)
    assert torch.equal(mean, again) and bool((variance > 0).all())


def test_an_unknown_trunk_is_a_one_line_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"^trunk must be None or one of .*got 'transformer'$"):
        DeepGPConfig(method="svdkl", data="digits", trunk="transformer")
