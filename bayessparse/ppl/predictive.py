"""Posterior predictive -- Monte Carlo over the guide ``q(W, Z)`` -- and its ArviZ export.

    p(y | x, data) ≈ (1/S) Σ_s p(y | x, W_s, Z_s),      (W_s, Z_s) ~ q

:func:`predictive` works on any model and guide of this package (or any Pyro model / guide pair
whose model returns the network's output): it draws ``S`` sets of latents from the guide once
(with :class:`pyro.infer.Predictive`; draw ``s`` is the same network for every example, as
``az.loo`` requires) and runs the model conditioned on each, batch by batch. With the point mass
and ``q(Z) = p(Z)`` (CigL) the draws differ only in ``Z``; with a learned ``q(Z)`` (``vcigl``) the
keep probabilities are the learned ones; with the Gaussian family ``W`` varies too.

:func:`predictive_probs` does the same for a trained run (:mod:`bayessparse.train`): its guide is
rebuilt around the run's evaluated network. The run's averaged network (CigL's weight average,
``vcigl``'s average of ``E_q[Z]⊙M⊙U``) is the single-network (weight-scaling) approximation of the
same predictive. BatchNorm: a network trained under random ``Z`` has batch statistics that vary
with ``Z``; ``batchnorm="shared"`` runs every draw with the evaluated network's re-estimated
statistics, ``"per_draw"`` re-estimates them for each draw on the training inputs (SWA's
``update_bn`` applied to the thinned network).

:func:`to_inference_data` is the one place that builds ArviZ objects (``az.from_dict``; ArviZ
1.x has no ``from_pyro``, so a port is one edit here). Its ``posterior`` group holds per-draw
summaries of the latents (:func:`latent_summaries`: the fraction of each layer's active weights
that ``Z_s`` keeps, the Gaussian family's weight deviation), its ``log_likelihood`` the data the
posterior was fitted to (for PSIS-LOO), and a held-out set goes to ``predictions`` (scored by its
log pointwise predictive density, :func:`lppd`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import Predictive
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset

from bayessparse.batches import batches, inputs
from bayessparse.files import save_figure
from bayessparse.ppl.guide import SparseGuide
from bayessparse.ppl.model import SparseNetModel, likelihood_of, z_site
from bayessparse.sparsity.density import prunable_weights

__all__ = ["BATCHNORM", "WEIGHTS", "LatentSummary", "keep_probabilities", "keep_probability", "latent_summaries",
           "lppd", "plot_posterior_predictive", "pointwise_log_likelihood", "posterior_means", "predictive",
           "predictive_probs", "run_posterior", "to_inference_data"]

#: How :func:`predictive_probs` reads the given network's prunable weights.
WEIGHTS = ("expected", "means")
#: BatchNorm statistics of the draws in :func:`predictive_probs`.
BATCHNORM = ("shared", "per_draw")


@torch.no_grad()
def predictive(model: Any, guide: Any, data: Dataset | Tensor | Iterable, num_samples: int, *,
               batch_size: int = 1024, seed: int | None = None, device: Any = None,
               return_draws: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """``S`` posterior-predictive draws of the model's output on ``data``, without a training run.

    Args:
        model, guide: e.g. :class:`~.model.SparseNetModel` and :class:`~.guide.SparseGuide`; the
            model's ``forward(x)`` returns the network output.
        data: a tensor of inputs, a dataset of ``(x, y)`` pairs, or an iterable of input batches.
        num_samples: ``S``.
        seed: seeds the draws without touching the global random state (``None``: global state).
        return_draws: also return the guide's draws, ``site -> (S, ...)`` (for :func:`latent_summaries`).

    Returns ``(S, N, C)`` class probabilities for a categorical likelihood, else ``(S, N, ...)`` raw
    outputs (the regression means), on the CPU. Draw ``s`` is the same ``(W_s, Z_s)`` for all inputs.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    with seeded(seed):
        draws = Predictive(guide, num_samples=num_samples)()
        outputs = [_outputs(poutine.condition(model, {k: v[s] for k, v in draws.items()}), data, batch_size, device)
                   for s in range(num_samples)]
    out = torch.stack(outputs)
    categorical = getattr(model, "likelihood", "categorical") == "categorical"
    out = out.float().softmax(-1) if categorical else out
    return (out, draws) if return_draws else out


def seeded(seed: int | None) -> contextlib.AbstractContextManager:
    """``poutine.seed(seed)`` inside a forked random state, or nothing for ``seed=None``."""
    if seed is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    stack.enter_context(torch.random.fork_rng(devices=cuda))
    stack.enter_context(poutine.seed(rng_seed=seed))
    return stack


def _outputs(model: Any, data: Any, batch_size: int, device: Any) -> Tensor:
    if torch.is_tensor(data):
        chunks = data.split(batch_size)
    elif isinstance(data, Dataset):
        chunks = (x for x, _ in batches(data, batch_size, device=device))
    else:
        chunks = data
    return torch.cat([model(x.to(device) if device is not None else x).cpu() for x in chunks])


def keep_probabilities(run: Any) -> dict[str, Tensor | float]:
    """``E_q[Z]`` per prunable layer of a run: learned (``vcigl``), ``p`` (CigL) or 1 (no random mask)."""
    guide = getattr(run.engine, "guide", None)
    if guide is not None and guide.keep == "learned":
        with run.engine.scope():  # the learned logits live in the run's own param store
            return guide.keep_probabilities()
    keep = keep_probability(run)
    return {name: keep for name in prunable_weights(run.model)}


def keep_probability(run: Any) -> float:
    """``p`` of the run's random mask (CigL), the mean learned keep probability (``vcigl``), 1 otherwise."""
    guide = getattr(run.engine, "guide", None)
    if guide is not None and guide.keep == "learned":
        probs = keep_probabilities(run)
        return float(torch.stack([p.mean() for p in probs.values()]).mean())
    random_mask = getattr(run.method, "random_mask", None)
    return float(random_mask.keep) if random_mask is not None else 1.0


@torch.no_grad()
def posterior_means(run: Any, model: nn.Module, weights: str = "expected") -> nn.Module:
    """A copy of ``model`` whose prunable weights are the variational means ``M ⊙ U``, in eval mode.

    ``weights="expected"``: ``model`` holds the posterior mean of the *network* weights,
    ``E_q[Z ⊙ W] = E_q[Z]·M⊙U`` -- the run's evaluated model (``load_finished``; CigL's and
    ``vcigl``'s weight average), so ``U = W / E_q[Z]``. ``"means"``: ``model`` holds ``U`` itself
    (``run.model``, the last iterate). Biases, norms and BatchNorm statistics are kept.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    net = copy.deepcopy(model).eval()
    if weights == "expected":
        keep = keep_probabilities(run)
        for name, w in prunable_weights(net).items():
            w.div_(keep[name])
    return net


def run_posterior(run: Any, net: nn.Module) -> tuple[SparseNetModel, SparseGuide]:
    """The run's model and guide rebuilt around ``net`` (``U`` = its prunable weights).

    Call inside a param-store scope of its own; the guide's own parameters (learned keep logits,
    scales) are copied from the run's engine. The prior does not enter the predictive; a proper one
    stands in for ``wd = 0``.
    """
    engine_guide = getattr(run.engine, "guide", None)
    keep = engine_guide.bayes.keep_prob if engine_guide is not None else keep_probability(run)
    bayes = SparseNetModel(net, len(run.data.train), run.cfg.weight_decay or 1.0, keep_prob=keep, name="net",
                           likelihood=likelihood_of(net))
    options = engine_guide.options() if engine_guide is not None else {}
    guide = SparseGuide(bayes, getattr(run.method, "masks", None), **options)
    if engine_guide is not None:
        for k, (value, constraint) in run.engine.own_params().items():
            pyro.param(k, value, constraint=constraint)
    return bayes, guide


@torch.no_grad()
def predictive_probs(
    run: Any,
    model: nn.Module,
    dataset: Dataset,
    samples: int,
    batch_size: int = 1024,
    *,
    weights: str = "expected",
    batchnorm: str = "shared",
    seed: int = 0,
    return_latents: bool = False,
) -> Tensor | tuple[Tensor, LatentSummary]:
    """``(S, N, C)`` class probabilities of ``S`` posterior draws on ``dataset`` (CPU, float32); for a
    regression network (:class:`~bayessparse.likelihoods.GaussianRegressor`) the ``(S, N, 1)`` means.

    Args:
        run: the trained run (its method gives ``M``, its engine the learned ``q(Z)``).
        model: a network of the run's architecture; see :func:`posterior_means` for ``weights``.
        samples: ``S``, the number of Monte Carlo draws.
        batchnorm: ``"shared"`` or ``"per_draw"`` (see the module docstring; ``S`` extra passes over
            the training data). Networks without BatchNorm are unaffected.
        seed: the draws are reproducible and do not touch the global random state; the same
            ``(run, model, samples, weights, seed)`` draw the same latents on every dataset.
        return_latents: also return the draws' :class:`LatentSummary` (:func:`latent_summaries`).
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if batchnorm not in BATCHNORM:
        raise ValueError(f"batchnorm must be one of {BATCHNORM}, got {batchnorm!r}")
    net = posterior_means(run, model, weights)
    norms = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    with pyro.get_param_store().scope():
        bayes, guide = run_posterior(run, net)
        if batchnorm == "shared" or not norms:
            probs, draws = predictive(bayes, guide, dataset, samples, batch_size=batch_size, seed=seed,
                                      device=run.device, return_draws=True)
        else:
            with seeded(seed):
                draws = Predictive(guide, num_samples=samples)()
            train_set = run.data.train_eval if run.data.train_eval is not None else run.data.train
            out = []
            for s in range(samples):
                draw = {name: value[s] for name, value in draws.items()}
                _reestimate_batchnorm(bayes, norms, draw, train_set, batch_size, run.device)
                outputs = _outputs(poutine.condition(bayes, draw), dataset, batch_size, run.device)
                out.append(outputs.float().softmax(-1) if bayes.likelihood == "categorical" else outputs)
            probs = torch.stack(out)
        return (probs, latent_summaries(guide, draws)) if return_latents else probs


def _reestimate_batchnorm(bayes: SparseNetModel, norms: list[_BatchNorm], draw: dict[str, Tensor],
                          train_set: Dataset, batch_size: int, device: Any) -> None:
    """BatchNorm statistics of the network under one draw: a cumulative average over the training inputs."""
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    bayes.network.train()
    conditioned = poutine.condition(bayes, draw)
    for x in inputs(train_set, batch_size, device):
        conditioned(x)
    bayes.network.eval()
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


@dataclass(frozen=True)
class LatentSummary:
    """Per-layer summaries of ``S`` draws ``(W_s, Z_s) ~ q`` of the guide (:func:`latent_summaries`).

    ``layers``: the prunable layers (weight names without ``.weight``), the ``layer`` coordinate.
    ``per_draw``: ``name -> (S, L)`` float64, one value per draw and layer:

    * ``keep_fraction``: ``Σ Z_s⊙M / Σ M``, the fraction of the layer's active weights that draw
      ``s`` keeps (1 for a run without a random mask); its expectation is ``keep_probability``;
    * ``relative_deviation`` (Gaussian family only): ``‖Z_s⊙M⊙(W_s − U)‖ / ‖Z_s⊙M⊙U‖``, how far the
      kept sampled weights are from their means, relative to the means.

    ``constant``: ``name -> (L,)`` float64, properties of ``q`` that do not vary over draws:

    * ``keep_probability``: ``E_q[Z]`` averaged over the active positions (learned ``sigmoid θ``
      for ``vcigl``, ``p`` for CigL, 1 without a random mask);
    * ``density``: ``Σ M / numel``;
    * ``scale_mean``, ``snr_mean`` (Gaussian family only): the mean learned ``σ`` and mean ``|U|/σ``
      over the active positions.
    """

    layers: tuple[str, ...]
    per_draw: dict[str, Tensor]
    constant: dict[str, Tensor]

    @property
    def num_draws(self) -> int:
        return int(self.per_draw["keep_fraction"].shape[0])


@torch.no_grad()
def latent_summaries(guide: SparseGuide, draws: dict[str, Tensor]) -> LatentSummary:
    """:class:`LatentSummary` of draws ``site -> (S, ...)`` of ``guide`` (``Predictive(guide, S)()``,
    or :func:`predictive` with ``return_draws=True``). Call where the guide's parameters live (its
    param-store scope): the Gaussian family reads ``σ``."""
    gaussian = guide.family == "gaussian"
    keep_probs = guide.keep_probabilities()
    layers, fraction, deviation = [], [], []
    constant: dict[str, list[Tensor]] = {"keep_probability": [], "density": []}
    if gaussian:
        constant.update(scale_mean=[], snr_mean=[])
    for name in guide.weight_names:
        w = draws[name].detach().double()
        u = guide.means[name].detach().to(w.device, w.dtype)
        num = w.shape[0]
        m = guide.mask(name)
        active = torch.ones_like(u) if m is None else m.detach().to(w.device, w.dtype)
        n_active = active.sum().clamp_min(1.0)
        z = draws.get(z_site(name))
        kept = active.expand(num, *u.shape) if z is None else z.detach().to(w.device, w.dtype) * active
        layers.append(name.rsplit(".", 1)[0] if "." in name else name)
        fraction.append(kept.flatten(1).sum(1) / n_active)
        p = guide.bayes.keep_prob if guide.keep == "prior" else keep_probs[name]  # (a float: no float32 rounding)
        p = torch.as_tensor(p, dtype=w.dtype, device=w.device).expand_as(u)
        constant["keep_probability"].append((p * active).sum() / n_active)
        constant["density"].append(active.sum() / active.numel())
        if gaussian:
            sigma = guide.scale_param(name).detach().to(w.device, w.dtype)
            tiny = torch.finfo(w.dtype).tiny
            norm_u = (u * kept).flatten(1).norm(dim=1).clamp_min(tiny)
            deviation.append(((w - u) * kept).flatten(1).norm(dim=1) / norm_u)
            constant["scale_mean"].append((sigma * active).sum() / n_active)
            constant["snr_mean"].append((u.abs() / sigma * active).sum() / n_active)
    per_draw = {"keep_fraction": torch.stack(fraction, 1).cpu()}
    if gaussian:
        per_draw["relative_deviation"] = torch.stack(deviation, 1).cpu()
    return LatentSummary(tuple(layers), per_draw, {k: torch.stack(v).cpu() for k, v in constant.items()})


def _check_probs(probs: Tensor, labels: Tensor, what: str) -> tuple[Tensor, Tensor]:
    probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().to("cpu", torch.long)
    if probs.dim() != 3 or labels.shape != probs.shape[1:2]:
        raise ValueError(f"need {what} probs (S, N, C) and labels (N,), "
                         f"got {tuple(probs.shape)} and {tuple(labels.shape)}")
    return probs, labels


def pointwise_log_likelihood(probs: Tensor, labels: Tensor) -> Tensor:
    """``(S, N)`` ``log p(y_n | θ_s)`` of ``(S, N, C)`` probabilities (float64; floored at the smallest
    normal double)."""
    probs, labels = _check_probs(probs, labels, "")
    return probs[:, torch.arange(probs.shape[1]), labels].clamp_min(np.finfo(np.float64).tiny).log()


def lppd(probs: Tensor, labels: Tensor) -> Tensor:
    """``(N,)`` log pointwise predictive density ``log (1/S) Σ_s p(y_n | θ_s)`` (float64); sum it for the lppd."""
    log_lik = pointwise_log_likelihood(probs, labels)
    return torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])


def to_inference_data(probs: Tensor, labels: Tensor, latents: LatentSummary, *, test_probs: Tensor | None = None,
                      test_labels: Tensor | None = None, seed: int = 0, attrs: dict[str, Any] | None = None) -> Any:
    """ArviZ ``InferenceData`` of ``S`` posterior draws: their latents, the fitted data and a held-out set.

    ``probs (S, N, C)`` and ``labels (N,)``: the draws' class probabilities on data the posterior
    was *fitted* to (the training set, or a subsample of it). Those go to ``log_likelihood``, so
    ``az.loo`` / ``az.waic`` on this object are leave-one-out over training examples, as PSIS-LOO
    is defined. ``test_probs (S, M, C)`` / ``test_labels (M,)``: a held-out set, stored in ArviZ's
    out-of-sample groups (score it by its lppd, :func:`lppd`; LOO of data the posterior never saw
    is not LOO). ``latents``: the :class:`LatentSummary` of the same draws.

    Groups (one chain, ``S`` draws; dims ``layer``, ``obs`` (fitted examples), ``test_obs``, ``class``):

    * ``posterior``: ``latents.per_draw`` -- ``keep_fraction (chain, draw, layer)`` and, for the
      Gaussian family, ``relative_deviation (chain, draw, layer)``;
    * ``constant_data``: ``latents.constant`` -- ``keep_probability``, ``density`` (and
      ``scale_mean``, ``snr_mean``) per ``layer``;
    * ``log_likelihood``: ``y (chain, draw, obs)`` = ``log p(y_n | θ_s)`` on the fitted data
      (probabilities floored at the smallest normal double);
    * ``observed_data``: ``y (obs,)``, the fitted labels;
    * ``posterior_predictive``: ``y (chain, draw, obs)``, replicated labels ``y_rep ~
      Categorical(probs[s, n])`` (seeded; what PPC plots compare with ``observed_data``), and
      ``probs (chain, draw, obs, class)``;
    * with a test set, ``predictions``: ``y (chain, draw, test_obs)`` (replicated, seeded) and
      ``probs (chain, draw, test_obs, class)``; ``predictions_constant_data``: ``y_true (test_obs,)``,
      the held-out labels (ArviZ has no observed-data group for predictions).
    """
    import arviz as az

    probs, labels = _check_probs(probs, labels, "fitted")
    if (test_probs is None) != (test_labels is None):
        raise ValueError("test_probs and test_labels go together")
    s, n, c = probs.shape
    if not isinstance(latents, LatentSummary) or latents.num_draws != s:
        raise ValueError(f"need the LatentSummary of the same {s} draws, got {latents!r:.80}")
    generator = torch.Generator().manual_seed(seed)

    def replicate(p: Tensor) -> np.ndarray:
        return torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=generator).reshape(p.shape[:2]).numpy()

    layer_dims = {name: ["layer"] for name in [*latents.per_draw, *latents.constant]}
    groups: dict[str, Any] = dict(
        posterior={k: v.numpy()[None] for k, v in latents.per_draw.items()},
        constant_data={k: v.numpy() for k, v in latents.constant.items()},
        log_likelihood={"y": pointwise_log_likelihood(probs, labels).numpy()[None]},
        observed_data={"y": labels.numpy()},
        posterior_predictive={"y": replicate(probs)[None], "probs": probs.numpy()[None]},
        coords={"layer": list(latents.layers), "obs": np.arange(n), "class": np.arange(c)},
        dims={**layer_dims, "y": ["obs"], "probs": ["obs", "class"]},
    )
    if test_probs is not None:
        test_probs, test_labels = _check_probs(test_probs, test_labels, "test")
        if test_probs.shape[0] != s or test_probs.shape[2] != c:
            raise ValueError(f"test_probs {tuple(test_probs.shape)} must have the same draws and classes "
                             f"as {(s, n, c)}")
        groups.update(
            predictions={"y": replicate(test_probs)[None], "probs": test_probs.numpy()[None]},
            predictions_constant_data={"y_true": test_labels.numpy()},
            pred_coords={"test_obs": np.arange(test_probs.shape[1]), "class": np.arange(c)},
            pred_dims={"y": ["test_obs"], "probs": ["test_obs", "class"], "y_true": ["test_obs"]},
        )
    base_attrs = {"inference_library": "pyro", "predictive": "Monte Carlo over the guide q(W, Z)",
                  "log_likelihood": "data the posterior was fitted to (training examples)"}
    return az.from_dict(**groups, attrs={**base_attrs, **(attrs or {})})


def plot_posterior_predictive(idata: Any, path: str | Path, title: str | None = None) -> Figure:
    """Posterior-predictive check as a PNG (written atomically); returns the Figure.

    Left: observed class frequencies of the fitted (training) labels against the replicated ones
    (median and 5--95 % band over draws). Right: the accuracy of each draw against that of the
    averaged predictive, on the held-out set (``predictions``) when there is one, else on the
    fitted data.
    """
    observed = idata.observed_data["y"].values
    replicated = idata.posterior_predictive["y"].values.reshape(-1, observed.shape[0])
    if "predictions" in idata.groups():
        target = idata.predictions_constant_data["y_true"].values
        probs = idata.predictions["probs"].values
        where = "held-out"
    else:
        target, probs, where = observed, idata.posterior_predictive["probs"].values, "fitted"
    probs = probs.reshape(-1, *probs.shape[2:])
    classes = probs.shape[-1]
    obs_freq = np.bincount(observed, minlength=classes) / len(observed)
    rep_freq = np.stack([np.bincount(r, minlength=classes) / len(r) for r in replicated])
    lo, mid, hi = np.percentile(rep_freq, [5, 50, 95], axis=0)
    per_draw = (probs.argmax(-1) == target).mean(-1)
    averaged = float((probs.mean(0).argmax(-1) == target).mean())

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    x = np.arange(classes)
    left.bar(x, obs_freq, color="0.8", label="observed")
    left.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", color="C0", capsize=3, label="replicated (5-95 %)")
    left.set(xlabel="class", ylabel="frequency", xticks=x, title=f"class frequencies ({len(observed)} fitted examples)")
    left.legend(loc="lower right")
    right.hist(per_draw, bins=min(30, max(5, len(per_draw) // 3)), color="C0", alpha=0.7, label="single draws")
    right.axvline(averaged, color="C3", label=f"MC average ({averaged:.3f})")
    right.set(xlabel=f"accuracy ({where}, {len(target)} examples)", ylabel="draws",
              title=f"accuracy over {len(per_draw)} draws")
    right.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig
