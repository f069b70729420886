"""Baselines the sparse networks are compared with: deep Gaussian processes and other GPs (GPyTorch), MC dropout.

A deep GP is the model CigL's training is read as approximating (Lei et al., ICLR 2023), so the real
thing is the natural reference: :class:`DeepGPConfig` describes a run, :func:`train_deep_gp` trains it
into a run folder (``config.yaml``, ``checkpoint.pt``, ``metrics.json``, ``reliability.png``; kind
``"deep-gp"``) with the metrics keys of a neural run, and :func:`load_deep_gp` gives the trained model
back as a predictor; :func:`check_deep_gp_data` makes the checks of a config that need its data, so that
a caller can refuse a config before other work starts. ``method="dgp"`` is doubly stochastic VI (Salimbeni
and Deisenroth, 2017), ``"dspp"`` a deep sigma point process (Jankowiak, Pleiss and Gardner, 2020); both
classify (softmax likelihood) and regress (Gaussian likelihood, e.g. ``data="diabetes"``).

- :mod:`~bayessparse.baselines.gp_config` -- the configuration and its checks;
- :mod:`~bayessparse.baselines.kmeans` -- seeded k-means, where the inducing points start;
- :mod:`~bayessparse.baselines.deep_gp` -- the layers, models, likelihoods and objectives;
- :mod:`~bayessparse.baselines.gp_predict` -- predictive probabilities and Gaussian mixtures;
- :mod:`~bayessparse.baselines.gp_training` -- training, checkpoints, metrics, the run folder.
- :mod:`~bayessparse.baselines.deep_kernel` -- SV-DKL, a GP on the features of the dataset's network
  (``method="svdkl"``, trained and predicted by the same code as the deep GPs).
- :mod:`~bayessparse.baselines.exact_gp` -- an exact GP regressor (ARD RBF), the strong small-data reference.
- :mod:`~bayessparse.baselines.mc_dropout` -- dense MC dropout on a grid of rates and precisions, the UCI
  benchmark's reference method.

Example::

    from bayessparse.baselines import DeepGPConfig, load_deep_gp, train_deep_gp

    metrics = train_deep_gp(DeepGPConfig(method="dspp", data="mnist1d"), "runs/dspp")
    predictor = load_deep_gp("runs/dspp")
    probs = predictor(dataset)                     # (N, K); a regressor gives (mean, variance)
"""

import importlib
import warnings

with warnings.catch_warnings():  # gpytorch scripts some functions at import, a torch.jit API torch now deprecates
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    importlib.import_module("gpytorch")

from bayessparse.baselines.gp_config import DeepGPConfig  # noqa: E402
from bayessparse.baselines.gp_predict import DeepGPPredictor  # noqa: E402
from bayessparse.baselines.gp_training import check_deep_gp_data, load_deep_gp, train_deep_gp  # noqa: E402

__all__ = ["DeepGPConfig", "DeepGPPredictor", "check_deep_gp_data", "load_deep_gp", "train_deep_gp"]
