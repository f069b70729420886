"""What a finished run predicts, in the forms the papers compare, and one scorecard for all of them.

A *predictor* maps a dataset to ``(N, C)`` predictive log-probabilities (any logits whose softmax
is the prediction). The forms:

* :func:`model_predictor` -- the run's evaluated network (for CigL the weight average);
* :func:`temperature_scaled` -- temperature scaling (Guo et al., ICML 2017): ``z / T`` with ``T``
  fitted on the validation split (:func:`bayessparse.uncertainty.temperature.fit_temperature`);
* :func:`mc_predictor` -- Monte Carlo over the random mask ``Z``:
  ``log (1/S) Σ_s softmax f(x; Z_s ⊙ M ⊙ U)`` with ``S`` fixed draws
  (:func:`bayessparse.ppl.predictive.predictive_probs`), MC-DP in the CigL paper's tables;
* :func:`ensemble_predictor` -- the mean of several predictors' softmax (FreeTickets ensembles).

:func:`scorecard` evaluates a predictor on the test split (accuracy, NLL, ECE, Brier and the mean
top-label confidence, whose excess over accuracy is over-confidence), optionally under the
corruption suite at severities 1-5 (mean over corruption types per severity) and against the
dataset's default OOD set (AUROC of the max-softmax and entropy scores).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from bayessparse.data.corruptions import SEVERITIES, corruption_suite, input_kind, materialize
from bayessparse.data.ood import check_ood, make_ood
from bayessparse.errors import ConfigError
from bayessparse.predict import labels_of, predict_logits
from bayessparse.uncertainty.metrics import summary
from bayessparse.uncertainty.ood import ood_metrics
from bayessparse.uncertainty.temperature import fit_temperature

Predictor = Callable[[Dataset], Tensor]


def model_predictor(run: Any, model: torch.nn.Module) -> Predictor:
    """The network's logits (eval mode)."""
    return lambda dataset: predict_logits(model, dataset, run.cfg.eval_batch_size, run.device)[0]


def temperature_scaled(run: Any, base: Predictor) -> tuple[Predictor, float]:
    """``base`` divided by the temperature fitted on the run's validation split; returns it and ``T``."""
    temperature = fit_temperature(base(run.data.val), labels_of(run.data.val))
    return (lambda dataset: base(dataset) / temperature), temperature


def mc_predictor(run: Any, model: torch.nn.Module, samples: int, seed: int = 0) -> Predictor:
    """Log of the mean softmax over ``samples`` draws of ``Z`` (the same draws for every dataset)."""
    from bayessparse.ppl.predictive import predictive_probs  # imports pyro only when asked for

    def predict(dataset: Dataset) -> Tensor:
        probs = predictive_probs(run, model, dataset, samples, run.cfg.eval_batch_size, seed=seed)
        return probs.double().mean(0).clamp_min(1e-300).log()

    return predict


def ensemble_predictor(members: Sequence[Predictor]) -> Predictor:
    """``log (1/M) Σ_m softmax(member_m)``; ``members`` is a non-empty sequence of predictors."""
    if isinstance(members, (str, bytes)) or not isinstance(members, Sequence):
        raise ConfigError(f"members must be a sequence of predictors, got {type(members).__name__}")
    if not members or not all(callable(m) for m in members):
        raise ConfigError(f"members must be a non-empty sequence of predictors, got {members!r:.80}")
    members = list(members)

    def predict(dataset: Dataset) -> Tensor:
        logp = torch.stack([torch.log_softmax(m(dataset).double(), -1) for m in members])
        return torch.logsumexp(logp, 0) - math.log(len(members))

    return predict


def _metrics(logits: Tensor, labels: Tensor, n_bins: int) -> dict[str, float]:
    probs = torch.softmax(logits.double(), -1)
    return {**summary(probs, labels, n_bins), "confidence": probs.max(-1).values.mean().item()}


def scorecard(run: Any, predict: Predictor, *, corruptions: bool = False, ood: bool = False,
              n_bins: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Test metrics of ``predict``; with ``corruptions`` the mean over corruption types per severity,
    with ``ood`` detection of the dataset's default OOD set (see the module docstring)."""
    if not callable(predict):
        raise ConfigError(f"predict must be a predictor (dataset -> logits), got {type(predict).__name__}")
    cfg, data = run.cfg, run.data
    n_bins = cfg.ece_bins if n_bins is None else n_bins
    test = data.test
    if not isinstance(test, TensorDataset) and (corruptions or ood):
        test = TensorDataset(*materialize(test, cfg.eval_batch_size))
    labels = labels_of(test)
    logits = predict(test)
    card: dict[str, Any] = {"test": _metrics(logits, labels, n_bins)}
    kind = input_kind(cfg.data, data.input_shape)
    if corruptions:
        rows: dict[int, list[dict[str, float]]] = {s: [] for s in SEVERITIES}
        for _, severity, dataset in corruption_suite(test, kind, seed=seed):
            rows[severity].append(_metrics(predict(dataset), labels, n_bins))
        card["corruptions"] = [
            {"severity": s, **{k: float(np.mean([r[k] for r in rows[s]])) for k in rows[s][0]}} for s in SEVERITIES
        ]
    if ood:
        name = check_ood(None, kind, cfg.data)
        out_logits = predict(make_ood(name, test, kind, seed=seed))
        scores = ood_metrics(torch.softmax(logits.double(), -1), torch.softmax(out_logits.double(), -1))
        card["ood"] = {"set": name, **{f"auroc_{score}": v["auroc"] for score, v in scores.items()}}
    return card
