"""Train a row's candidates on one split and choose one by its validation log-likelihood.

:func:`select` sees the split **without its test part** (:func:`hide_test`: ``data.test`` is a dataset that
raises on any access), trains one candidate per point of the row's grid, scores each on the validation part
with the row's own predictive and keeps the one with the lowest validation NLL (a diverged candidate scores
``inf``). Only the chosen candidate's :attr:`Candidate.predict` is ever called on the test part, by the caller,
after the choice (:mod:`.units`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from bayessparse.config import resolve
from bayessparse.data import DataBundle
from bayessparse.errors import TrainingDiverged
from bayessparse.regressors import GaussianPredictions, mc_predictions, network_predictions
from bayessparse.workflows.uci.rows import Budget, Row, epochs_for

__all__ = ["Candidate", "HiddenTest", "TestSplitRead", "hide_test", "select"]

Predict = Callable[[Dataset], GaussianPredictions]


class TestSplitRead(RuntimeError):
    """Raised when hyper-parameter selection touches the test split."""


class HiddenTest(Dataset):
    """The test split as selection sees it: any access raises :class:`TestSplitRead`."""

    def __len__(self) -> int:
        raise TestSplitRead("hyper-parameter selection read the test split")

    def __getitem__(self, index: int) -> Any:
        raise TestSplitRead("hyper-parameter selection read the test split")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise TestSplitRead("hyper-parameter selection read the test split")


def hide_test(data: DataBundle) -> DataBundle:
    """``data`` with its test split replaced by a :class:`HiddenTest`."""
    return dataclasses.replace(data, test=HiddenTest())


@dataclass
class Candidate:
    """One trained grid point: its setting, validation NLL, how to predict with it, its non-zero parameters."""

    setting: dict[str, Any]
    val_nll: float
    predict: Predict
    nonzero: int
    seconds: float


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.tensors  # the UCI splits are TensorDatasets


def _network(row: Row, data: DataBundle, split: int, budget: Budget) -> list[Candidate]:
    """The trainer's ``row.method`` at ``row.sparsity``, once per point of the network grid."""
    from bayessparse import train

    epochs = epochs_for(budget.network_steps, len(data.train), 32)
    out = []
    for setting in row.grid(budget):
        cfg = resolve({}, dict(data=data.name, data_seed=split, method=row.method, sparsity=row.sparsity or 0.9,
                               epochs=epochs, batch_size=32, **setting))
        start = time.perf_counter()
        try:
            run = train.build_run(cfg, data)
            model = train.fit(run, progress=False)
        except TrainingDiverged:
            out.append(Candidate(setting, math.inf, _diverged, 0, time.perf_counter() - start))
            continue
        model.eval()

        def predict(dataset: Dataset, run: Any = run, model: Any = model) -> GaussianPredictions:
            if row.mc:
                return mc_predictions(run, model, dataset, budget.mc_samples, seed=cfg.seed)
            return network_predictions(model, dataset, scale=data.target_scale)

        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        out.append(_scored(setting, predict, data, nonzero, start))
    return out


def _diverged(dataset: Dataset) -> GaussianPredictions:
    raise TrainingDiverged("a diverged candidate has no predictive")


def _scored(setting: dict[str, Any], predict: Predict, data: DataBundle, nonzero: int, start: float) -> Candidate:
    return Candidate(setting, _finite(predict(data.val).scores()["nll"]), predict, nonzero, time.perf_counter() - start)


def _mc_dropout(row: Row, data: DataBundle, split: int, budget: Budget) -> list[Candidate]:
    """Every (rate, precision) of the MC dropout grid, trained side by side in one batched network."""
    from bayessparse.baselines.mc_dropout import fit_grid

    x, y = _tensors(data.train)
    start = time.perf_counter()
    epochs = min(400, epochs_for(budget.dropout_steps, len(y), 32))
    grid = fit_grid(x, y, epochs=epochs, seed=split)
    nonzero = sum(int(torch.count_nonzero(p[0])) for p in grid.net.parameters())  # one grid point's network
    val = grid.predict(*_tensors(data.val), data.target_scale, samples=budget.dropout_samples)
    seconds = (time.perf_counter() - start) / len(val)

    def predict(dataset: Dataset, g: int) -> GaussianPredictions:
        return grid.predict(*_tensors(dataset), data.target_scale, samples=budget.dropout_samples, points=[g])[0]

    return [Candidate({"dropout": float(grid.rates[g]), "precision": float(grid.precisions[g]), "epochs": epochs},
                      _finite(val[g].scores()["nll"]), functools.partial(predict, g=g), nonzero, seconds)
            for g in range(len(val))]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _exact_gp(row: Row, data: DataBundle, split: int, budget: Budget) -> list[Candidate]:
    """The exact GP: its kernel's hyper-parameters by the marginal likelihood, so one candidate."""
    from bayessparse.baselines.exact_gp import fit_exact_gp

    start = time.perf_counter()
    gp = fit_exact_gp(*_tensors(data.train), iterations=budget.gp_iterations, lr=0.1, seed=split)

    def predict(dataset: Dataset) -> GaussianPredictions:
        return gp.predict(*_tensors(dataset), data.target_scale)

    return [_scored({"iterations": budget.gp_iterations}, predict, data, gp.parameters, start)]


def _bayesian_ridge(row: Row, data: DataBundle, split: int, budget: Budget) -> list[Candidate]:
    """Bayesian linear regression (Tipping 2001; MacKay 1992's evidence updates of the weight and noise
    precisions): predictive ``N(xᵀm, xᵀΣx + 1/α)``; its precisions are learned, so one candidate."""
    from sklearn.linear_model import BayesianRidge

    start = time.perf_counter()
    x, y = _tensors(data.train)
    model = BayesianRidge().fit(x.double().numpy(), y.double().numpy())

    def predict(dataset: Dataset) -> GaussianPredictions:
        xs, ys = _tensors(dataset)
        mean, std = model.predict(xs.double().numpy(), return_std=True)  # std includes the noise 1/α
        means = torch.from_numpy(mean)[None]
        return GaussianPredictions(means, torch.from_numpy(std)[None] ** 2, ys.double(), scale=data.target_scale)

    return [_scored({}, predict, data, int(x.shape[1]) + 3, start)]  # weights, intercept, two precisions


def _deep_gp(row: Row, data: DataBundle, split: int, budget: Budget) -> list[Candidate]:
    """GPyTorch's DSPP or two-layer DGP (:mod:`bayessparse.baselines`), about ``deep_gp_steps`` Adam steps of
    batch 64; its kernels and inducing points are learned by its objective, so one candidate."""
    from bayessparse.baselines import gp_training as G
    from bayessparse.baselines.gp_config import DeepGPConfig
    from bayessparse.baselines.deep_gp import free_parameters
    from bayessparse.baselines.gp_predict import predict as gp_predict

    epochs = epochs_for(budget.deep_gp_steps, len(data.train), 64)
    cfg = DeepGPConfig(method=row.kind, data=data.name, data_seed=split, epochs=epochs, batch_size=64,
                       num_inducing=min(100, len(data.train)))
    start = time.perf_counter()
    run = G.build_gp_run(cfg, data)
    try:
        G.fit(run, progress=False, validate=False)
    except TrainingDiverged:
        return [Candidate({"epochs": epochs}, math.inf, _diverged, 0, time.perf_counter() - start)]

    def predict(dataset: Dataset) -> GaussianPredictions:
        out = gp_predict(run.model, dataset, samples=cfg.eval_samples, batch_size=cfg.eval_batch_size, seed=cfg.seed)
        return data.task.gp_predictions(out, data.target_scale)

    return [_scored({"epochs": epochs}, predict, data, free_parameters(run.model), start)]


#: the candidates of each row kind
TRAINERS: dict[str, Callable[[Row, DataBundle, int, Budget], list[Candidate]]] = {
    "network": _network, "mc-dropout": _mc_dropout, "exact-gp": _exact_gp, "bayesian-ridge": _bayesian_ridge,
    "dspp": _deep_gp, "dgp": _deep_gp}


def select(row: Row, data: DataBundle, split: int, budget: Budget) -> tuple[Candidate, list[dict[str, Any]]]:
    """Train ``row``'s candidates on split ``split`` of ``data`` (its test part hidden) and return the one with
    the lowest validation NLL, with the trace ``[{**setting, "val_nll": …}]`` of every candidate. Raises
    :class:`TrainingDiverged` when every candidate diverged."""
    candidates = TRAINERS[row.kind](row, hide_test(data), split, budget)
    trace = [{**c.setting, "val_nll": c.val_nll} for c in candidates]
    chosen = min(candidates, key=lambda c: c.val_nll)
    if not math.isfinite(chosen.val_nll):
        raise TrainingDiverged(f"{row.name}: every candidate diverged on {data.name} split {split}")
    chosen.seconds = sum(c.seconds for c in candidates)
    return chosen, trace
