"""What a network is trained to predict: one object per task, the way GPyTorch composes a model with a likelihood.

A :class:`Task` owns everything that differs between classification and regression, so that the trainer,
the workflows and the reports ask their task instead of testing its name:

* the network wrapper (:meth:`Task.network`) and the training loss (:meth:`Task.loss`);
* the predictive of one network (:meth:`Task.predictions`) and of the Monte Carlo mixture over the random
  mask (the ``mc_*`` metrics), the metric summary (:meth:`Task.scores`), the validation score
  (:attr:`Task.score`) and the test metrics of a finished run (:meth:`Task.test_metrics`);
* the reliability figure (:meth:`Task.plot`: a reliability diagram; the calibration of central intervals);
* the table columns (:attr:`Task.columns`), the line ``bayessparse train`` prints (:attr:`Task.headline`),
  and which post-hoc rows apply (:attr:`Task.posthoc`: temperature scaling for classifiers).

The two tasks:

* :data:`CLASSIFICATION` -- ``y ~ Categorical(softmax f(x))``, the cross-entropy loss, class probabilities
  scored by accuracy, NLL, ECE and Brier (:func:`bayessparse.uncertainty.metrics.summary`);
* :data:`REGRESSION` -- ``y ~ N(f(x), s²)`` with a learned noise scale (the network inside a
  :class:`~bayessparse.likelihoods.GaussianRegressor`), a Gaussian (or a mixture of Gaussians over draws of
  ``Z``) scored by RMSE, NLL and central-interval coverage (:mod:`bayessparse.regressors`).

A task is a ``str`` (its name), so ``metrics.json``, configs and pickles carry it as before; code never
compares that name: it asks the task. Adding a task (say heteroscedastic regression) is one class here and
one entry in :data:`TASKS` (and the datasets that carry it, :mod:`bayessparse.data`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from bayessparse.errors import ConfigError, TrainingDiverged
from bayessparse.likelihoods import GaussianRegressor
from bayessparse.predict import predict_probs
from bayessparse.regressors import GaussianPredictions, network_predictions, regression_metrics
from bayessparse.uncertainty.metrics import summary
from bayessparse.uncertainty.reliability import plot_interval_calibration, plot_reliability, plot_reliability_overlay

__all__ = ["CLASSIFICATION", "ClassPredictions", "Classification", "GaussianRegression", "REGRESSION", "TASKS",
           "Task", "named"]


class ClassPredictions(NamedTuple):
    """Predictive class probabilities ``probs`` ``(N, K)`` of inputs whose labels are ``labels`` ``(N,)``
    (a pair: ``probs, labels = predictions``)."""

    probs: Tensor
    labels: Tensor

    def scores(self, n_bins: int = 15) -> dict[str, float]:
        return summary(self.probs, self.labels, n_bins=n_bins)


class Task(str):
    """The base of the tasks: a ``str`` (the task's name) with the behaviour of :mod:`its module <bayessparse.tasks>`."""

    #: the headline validation score (a key of :meth:`scores`; ``val_<score>`` in a run's history)
    score: str
    #: the columns of a ``bayessparse compare`` table, before the cost columns
    columns: tuple[str, ...]
    #: the scores ``bayessparse train`` prints
    headline: tuple[str, ...]
    #: the post-hoc rows a table can add to a method's runs (``"ts"``: temperature scaling)
    posthoc: tuple[str, ...] = ()
    #: the deep GP section of the study: ``(key, label, decimals, direction)`` per column; direction +1 if higher
    #: is better, −1 if lower is, 0 for a coverage (scored by its distance to the nominal level)
    report_columns: tuple[tuple[str, str, int, int], ...]
    #: whether the predictive is class probabilities: what the class-probability tools take (temperature
    #: scaling, the predictors of :mod:`bayessparse.workflows.predictors` the study scores runs with, a deep GP's
    #: reliability diagram); otherwise the study reads the run's ``metrics.json`` (with its ``mc_*`` scores)
    predicts_classes: bool
    #: whether the predictive has central intervals whose coverage is a target (the deep GP section)
    has_intervals: bool

    def __new__(cls) -> "Task":
        return super().__new__(cls, cls.name_)

    name_: str = ""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return named, (str(self),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def name(self) -> str:
        return str(self)

    # ---------------------------------------------------------------- the network and its loss

    def network(self, net: nn.Module) -> nn.Module:
        """The module trained for this task around ``net`` (``net`` itself, or a head holding more parameters)."""
        return net

    def loss(self, model: nn.Module, output: Tensor, y: Tensor) -> Tensor:
        """The mean negative log-likelihood of ``y`` under ``model``'s ``output`` (the training loss)."""
        raise NotImplementedError

    def check_method(self, method: Any, method_name: str, data: str) -> None:
        """A ConfigError when ``method`` cannot produce this task's predictive."""

    def require_classes(self, what: str, data: str, verb: str = "works on", hint: str = "") -> None:
        """A ConfigError ("``what`` ``verb`` classification data; ... ``hint``") when ``what`` needs class
        probabilities and this task (of dataset ``data``) has none."""

    # ---------------------------------------------------------------- predictions and scores

    def predictions(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                    scale: tuple[float, float] | None = None) -> Any:
        """The predictive of one network on ``dataset`` (``scale``: the data's
        :attr:`~bayessparse.data.DataBundle.target_scale`, for scores in the target's original units)."""
        raise NotImplementedError

    def gp_predictions(self, out: dict[str, Tensor], scale: tuple[float, float] | None = None) -> Any:
        """The predictions object of a deep GP's :func:`bayessparse.baselines.gp_predict.predict` output."""
        raise NotImplementedError

    def scores(self, predictions: Any, n_bins: int) -> dict[str, float]:
        """The metric summary of ``predictions``."""
        raise NotImplementedError

    def validation_scores(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                          n_bins: int, where: str, scale: tuple[float, float] | None = None) -> dict[str, float]:
        """The scores of ``model`` on ``dataset``; outputs that are not finite are a divergence (``where``:
        the epoch and step, for the message)."""
        raise NotImplementedError

    def test_metrics(self, run: Any, model: nn.Module, fast: nn.Module) -> tuple[dict[str, Any], Any]:
        """Test and validation scores of a finished run's evaluated ``model`` (``fast``: the network timed for
        inference) and the test predictions its figure is drawn from."""
        raise NotImplementedError

    def pool(self, predictions: Sequence[Any]) -> Any:
        """One predictions object of several (seeds of a row), for one figure."""
        raise NotImplementedError

    def plot(self, rows: dict[str, Any], path: str | Path, *, title: str, n_bins: int) -> None:
        """The task's calibration figure of ``rows`` (name -> predictions) written to ``path``."""
        raise NotImplementedError

    def report_heading(self, setup: str, data: str, rest: str) -> tuple[str, str]:
        """The study report's heading and table title of a deep GP setup (``rest``: model, epochs, sparsity)."""
        return f"### {setup}: {data}, {rest}", f"{setup}: sparse networks and deep GPs"

    #: the study report's note under that heading
    report_note: str = ""


def _check_finite(outputs: Tensor, what: str, where: str, positive: bool = False) -> None:
    """A divergence when ``outputs`` hold a NaN or infinity (with ``positive``, also a zero: a regression
    head's predictive variance ``s²`` that overflowed or underflowed although ``log s`` is finite)."""
    bad = not bool(torch.isfinite(outputs).all()) or (positive and not bool((outputs > 0).all()))
    if bad:
        kind = "non-finite or zero" if positive else "non-finite"
        raise TrainingDiverged(f"the network's {what} became {kind} at {where}")


class Classification(Task):
    """``y ~ Categorical(softmax f(x))``: integer labels in ``[0, K)``, class probabilities."""

    name_ = "classification"
    score = "accuracy"
    columns = ("accuracy", "nll", "ece", "brier", "density", "train_seconds")
    headline = ("accuracy", "nll", "ece", "brier")
    posthoc = ("ts",)
    report_columns = (("accuracy", "accuracy", 4, 1), ("nll", "NLL", 4, -1), ("ece", "ECE", 4, -1),
                      ("brier", "Brier", 4, -1))
    predicts_classes = True
    has_intervals = False

    def loss(self, model: nn.Module, output: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(output, y)

    def predictions(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                    scale: tuple[float, float] | None = None) -> ClassPredictions:
        return ClassPredictions(*predict_probs(model, dataset, batch_size, device))

    def gp_predictions(self, out: dict[str, Tensor], scale: tuple[float, float] | None = None) -> ClassPredictions:
        return ClassPredictions(out["probs"], out["labels"])

    def scores(self, predictions: ClassPredictions, n_bins: int) -> dict[str, float]:
        return predictions.scores(n_bins)

    def validation_scores(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                          n_bins: int, where: str, scale: tuple[float, float] | None = None) -> dict[str, float]:
        predictions = self.predictions(model, dataset, batch_size, device)
        _check_finite(predictions.probs, "outputs", where)
        return predictions.scores(n_bins)

    def test_metrics(self, run: Any, model: nn.Module, fast: nn.Module) -> tuple[dict[str, Any], ClassPredictions]:
        cfg = run.cfg
        start = time.perf_counter()
        test = self.predictions(fast, run.data.test, cfg.eval_batch_size, run.device)
        inference_ms = 1000 * (time.perf_counter() - start) / len(test.labels)
        metrics: dict[str, Any] = test.scores(cfg.ece_bins)
        val = self.predictions(fast, run.data.val, cfg.eval_batch_size, run.device).scores(cfg.ece_bins)
        metrics.update({f"val_{k}": v for k, v in val.items()},
                       inference_ms_per_example=inference_ms)  # the test set, batches of eval_batch_size
        return metrics, test

    def pool(self, predictions: Sequence[ClassPredictions]) -> ClassPredictions:
        return ClassPredictions(torch.cat([p.probs for p in predictions]), torch.cat([p.labels for p in predictions]))

    def plot(self, rows: dict[str, ClassPredictions], path: str | Path, *, title: str, n_bins: int) -> None:
        """A reliability diagram (Guo et al., 2017); several rows share one axes."""
        if len(rows) == 1:
            (only,) = rows.values()
            plot_reliability(only.probs, only.labels, path, n_bins=n_bins, title=title)
        else:
            plot_reliability_overlay({k: (p.probs, p.labels) for k, p in rows.items()}, path, n_bins=n_bins,
                                     title=title)


class GaussianRegression(Task):
    """``y ~ N(f(x), s²)`` with one learned noise scale ``s`` (:class:`~bayessparse.likelihoods.GaussianRegressor`)."""

    name_ = "regression"
    score = "rmse"
    columns = ("rmse", "nll", "coverage_50", "coverage_90", "coverage_95", "density", "train_seconds")
    headline = ("rmse", "nll", "coverage_90")
    report_columns = (("rmse", "RMSE", 4, -1), ("nll", "NLL", 4, -1), ("coverage_50", "coverage 50 %", 3, 0),
                      ("coverage_90", "coverage 90 %", 3, 0), ("coverage_95", "coverage 95 %", 3, 0))
    predicts_classes = False
    has_intervals = True
    report_note = ("Standardised targets: RMSE and NLL in units of the target's standard deviation; coverage is the "
                   "fraction of test targets inside the central predictive interval. `+ MC` rows: Monte Carlo over "
                   "the random mask `Z` of the same runs.")

    def network(self, net: nn.Module) -> nn.Module:
        return GaussianRegressor(net)

    def loss(self, model: nn.Module, output: Tensor, y: Tensor) -> Tensor:
        return model.nll(output, y)

    def check_method(self, method: Any, method_name: str, data: str) -> None:
        if not method.regression:
            raise ConfigError(f"method {method_name!r} predicts classes only; {data!r} is a regression dataset")

    def require_classes(self, what: str, data: str, verb: str = "works on", hint: str = "") -> None:
        raise ConfigError(f"{what} {verb} classification data; {data!r} is a regression dataset{hint}")

    def predictions(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                    scale: tuple[float, float] | None = None) -> GaussianPredictions:
        return network_predictions(model, dataset, batch_size, device, scale)

    def gp_predictions(self, out: dict[str, Tensor], scale: tuple[float, float] | None = None) -> GaussianPredictions:
        return GaussianPredictions(out["means"], out["variances"], out["targets"], out["log_weights"], scale)

    def scores(self, predictions: GaussianPredictions, n_bins: int) -> dict[str, float]:
        return predictions.scores()

    def validation_scores(self, model: nn.Module, dataset: Dataset, batch_size: int, device: Any,
                          n_bins: int, where: str, scale: tuple[float, float] | None = None) -> dict[str, float]:
        predictions = self.predictions(model, dataset, batch_size, device, scale)
        _check_finite(predictions.means, "outputs", where)
        _check_finite(predictions.variances, "noise scale", where, positive=True)
        return predictions.scores()

    def test_metrics(self, run: Any, model: nn.Module, fast: nn.Module) -> tuple[dict[str, Any], GaussianPredictions]:
        metrics, predictions = regression_metrics(run, model, fast)
        return {"task": self.name, **metrics}, predictions

    def pool(self, predictions: Sequence[GaussianPredictions]) -> Tensor:
        """The probability integral transforms of every target, ``(N,)`` (mixtures of different sizes pool)."""
        return torch.cat([p.pit() for p in predictions])

    def plot(self, rows: dict[str, Any], path: str | Path, *, title: str, n_bins: int) -> None:
        """The calibration of central intervals (observed against nominal coverage) of every row on one axes."""
        pits = {k: p.pit() if isinstance(p, GaussianPredictions) else p for k, p in rows.items()}
        plot_interval_calibration(pits, path, title=title)

    def report_heading(self, setup: str, data: str, rest: str) -> tuple[str, str]:
        return f"### Regression, {data}: {rest}", f"{setup} (regression): sparse networks and deep GPs"


CLASSIFICATION = Classification()
REGRESSION = GaussianRegression()
#: name -> task
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, REGRESSION)}


def named(name: str) -> Task:
    """The task called ``name`` (``"classification"`` or ``"regression"``)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (choose from: {', '.join(TASKS)})")
    return TASKS[str(name)]
