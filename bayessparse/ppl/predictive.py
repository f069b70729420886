"""Posterior predictive of a trained run -- Monte Carlo over the random mask ``Z`` -- and its ArviZ export.

With the guide ``q(W, Z) = δ(W − M⊙U)·Bernoulli(Z; p)`` the posterior predictive is

    p(y | x, data) ≈ E_{Z ~ Bernoulli(p)} [ softmax f(x; Z ⊙ M ⊙ U) ] ≈ (1/S) Σ_s softmax f(x; Z_s ⊙ M ⊙ U)

:func:`predictive_probs` draws ``Z_1..Z_S`` from the guide with :class:`pyro.infer.Predictive`
(once: draw ``s`` is the same network for every example, as ``az.loo`` requires) and runs the
model conditioned on them over a dataset, batch by batch: ``(S, N, C)`` per-sample
probabilities. CigL's averaged network ``W_CigL ≈ E_q[Z⊙W] = p·M⊙Ū`` is the single-network
(weight-scaling) approximation of the same predictive. For methods without ``Z`` all samples
coincide. With BatchNorm, the statistics each draw runs with are a choice (``batchnorm``).

:func:`to_inference_data` is the one place that builds ArviZ objects (``az.from_dict``; ArviZ
1.x has no ``from_pyro``, so a port is one edit here).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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
from bayessparse.ppl.model import SparseNetModel, z_site
from bayessparse.sparsity.density import prunable_weights

__all__ = ["BATCHNORM", "WEIGHTS", "keep_probability", "plot_posterior_predictive", "posterior_means", "predictive_probs",
           "to_inference_data"]

#: How :func:`predictive_probs` reads the given network's prunable weights.
WEIGHTS = ("expected", "means")
#: BatchNorm statistics of the draws in :func:`predictive_probs`.
BATCHNORM = ("shared", "per_draw")


def keep_probability(run: Any) -> float:
    """``p`` of the run's random mask (CigL), 1 for methods without one."""
    random_mask = getattr(run.method, "random_mask", None)
    return float(random_mask.keep) if random_mask is not None else 1.0


@torch.no_grad()
def posterior_means(run: Any, model: nn.Module, weights: str = "expected") -> nn.Module:
    """A copy of ``model`` whose prunable weights are the variational means ``M ⊙ U``, in eval mode.

    ``weights="expected"``: ``model`` holds the posterior mean of the *network* weights,
    ``E_q[Z ⊙ W] = p·M⊙U`` -- the run's evaluated model (``load_finished``; for CigL the weight
    average, whose snapshots are ``p·W``), so ``U = W / p``. ``"means"``: ``model`` holds ``U``
    itself (``run.model``, the last iterate). Biases, norms and BatchNorm statistics are kept.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    net = copy.deepcopy(model).eval()
    keep = keep_probability(run)
    if weights == "expected" and keep < 1.0:
        torch._foreach_div_(list(prunable_weights(net).values()), keep)
    return net


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
) -> Tensor:
    """``(S, N, C)`` class probabilities of ``S`` posterior draws of ``Z`` on ``dataset`` (CPU, float32).

    Args:
        run: the trained run (its method gives ``M`` and ``p``, its config ``N`` and ``wd``).
        model: a network of the run's architecture; see :func:`posterior_means` for ``weights``.
        samples: ``S``, the number of Monte Carlo draws of ``Z``.
        batchnorm: ``"shared"``: every draw uses ``model``'s BatchNorm statistics (one pass over
            ``dataset`` for all draws). ``"per_draw"``: each draw's statistics are re-estimated on the
            training set first (SWA's ``update_bn`` for the thinned network; ``S`` extra passes over
            the training data). CigL trains every ``Z`` under batch statistics, so with shared
            statistics single draws are weaker than their average; networks without BatchNorm are
            unaffected.
        seed: the draws are reproducible and do not touch the global random state.
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if batchnorm not in BATCHNORM:
        raise ValueError(f"batchnorm must be one of {BATCHNORM}, got {batchnorm!r}")
    net = posterior_means(run, model, weights)
    keep = keep_probability(run)
    # The prior does not enter the predictive (the latents are conditioned on draws of the guide); a
    # proper one is used so that Predictive's shape probes can sample it even for wd = 0.
    bayes = SparseNetModel(net, len(run.data.train), run.cfg.weight_decay or 1.0, keep_prob=keep)
    guide = SparseGuide(bayes, getattr(run.method, "masks", None))
    norms = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    cuda = [run.device] if run.device.type == "cuda" else []  # poutine.seed reseeds CUDA without restoring it
    with torch.random.fork_rng(devices=cuda), pyro.get_param_store().scope(), poutine.seed(rng_seed=seed), \
            torch.no_grad():
        z_names = [z_site(name) for name in bayes.weight_names] if keep < 1.0 else []
        draws = Predictive(guide, num_samples=samples, return_sites=z_names)() if z_names else {}
        for name in bayes.weight_names:  # the point mass: one tensor, viewed S times
            loc = guide.location(name)
            draws[name] = loc.expand(samples, *loc.shape)
        if batchnorm == "shared" or not norms:
            return _predict(bayes, draws, dataset, batch_size, run.device)
        train_set = run.data.train_eval if run.data.train_eval is not None else run.data.train
        out = []
        for s in range(samples):
            draw = {name: value[s : s + 1] for name, value in draws.items()}
            _reestimate_batchnorm(bayes, norms, {n: v[0] for n, v in draw.items()}, train_set, batch_size, run.device)
            out.append(_predict(bayes, draw, dataset, batch_size, run.device))
        return torch.cat(out, dim=0)


def _predict(bayes: SparseNetModel, draws: dict[str, Tensor], dataset: Dataset, batch_size: int,
             device: Any) -> Tensor:
    """The model conditioned on each of the draws (leading dimension), over ``dataset``: ``(S, N, C)``.

    A plain loop of ``poutine.condition`` over the draws: ``Predictive(posterior_samples=...)`` would
    also run the model unconditioned twice per call to probe plate nesting and shapes.
    """
    samples = next(iter(draws.values())).shape[0]
    per_draw = []
    for s in range(samples):
        conditioned = poutine.condition(bayes, {name: value[s] for name, value in draws.items()})
        logits = [conditioned(x) for x, _ in batches(dataset, batch_size, device=device)]
        per_draw.append(torch.cat(logits).float().softmax(-1).cpu())
    return torch.stack(per_draw)


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


def to_inference_data(probs: Tensor, labels: Tensor, *, seed: int = 0) -> Any:
    """ArviZ ``InferenceData`` of ``S`` posterior-predictive draws ``probs (S, N, C)`` with labels ``(N,)``.

    Groups (one chain, ``S`` draws; dims ``obs`` and ``class``):

    * ``posterior``: ``probs`` ``(chain, draw, obs, class)`` -- the Categorical's parameter under draw
      ``s``, a deterministic function of the latent ``Z_s`` (like a linear predictor ``mu``);
    * ``posterior_predictive``: ``y`` ``(chain, draw, obs)`` -- replicated labels, one
      ``y_rep ~ Categorical(probs[s, n])`` per draw (seeded), the convention PPC plots expect;
    * ``log_likelihood``: ``y`` ``(chain, draw, obs)`` = ``log p(y_n | Z_s)`` (for ``az.loo`` / ``az.waic``;
      probabilities are floored at the smallest normal double);
    * ``observed_data``: ``y`` ``(obs,)``.
    """
    import arviz as az

    probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().to("cpu", torch.long)
    if probs.dim() != 3 or labels.shape != probs.shape[1:2]:
        raise ValueError(f"need probs (S, N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    s, n, c = probs.shape
    generator = torch.Generator().manual_seed(seed)
    replicated = torch.multinomial(probs.reshape(-1, c), 1, generator=generator).reshape(s, n)
    log_lik = probs[:, torch.arange(n), labels].clamp_min(np.finfo(np.float64).tiny).log()
    return az.from_dict(
        posterior={"probs": probs.numpy()[None]},
        posterior_predictive={"y": replicated.numpy()[None]},
        log_likelihood={"y": log_lik.numpy()[None]},
        observed_data={"y": labels.numpy()},
        coords={"obs": np.arange(n), "class": np.arange(c)},
        dims={"probs": ["obs", "class"], "y": ["obs"]},
        attrs={"inference_library": "pyro", "predictive": "Monte Carlo over the random mask Z"},
    )


def plot_posterior_predictive(idata: Any, path: str | Path, title: str | None = None) -> Figure:
    """Posterior-predictive check as a PNG (written atomically); returns the Figure.

    Left: observed class frequencies against the replicated ones (median and 5--95 % band over
    draws). Right: the accuracy of each draw ``Z_s`` against that of the averaged predictive.
    """
    observed = idata.observed_data["y"].values
    replicated = idata.posterior_predictive["y"].values.reshape(-1, observed.shape[0])
    probs = idata.posterior["probs"].values.reshape(-1, *idata.posterior["probs"].shape[2:])
    classes = probs.shape[-1]
    obs_freq = np.bincount(observed, minlength=classes) / len(observed)
    rep_freq = np.stack([np.bincount(r, minlength=classes) / len(r) for r in replicated])
    lo, mid, hi = np.percentile(rep_freq, [5, 50, 95], axis=0)
    per_draw = (probs.argmax(-1) == observed).mean(-1)
    averaged = float((probs.mean(0).argmax(-1) == observed).mean())

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    x = np.arange(classes)
    left.bar(x, obs_freq, color="0.8", label="observed")
    left.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", color="C0", capsize=3, label="replicated (5-95 %)")
    left.set(xlabel="class", ylabel="frequency", xticks=x, title="class frequencies")
    left.legend(loc="lower right")
    right.hist(per_draw, bins=min(30, max(5, len(per_draw) // 3)), color="C0", alpha=0.7, label="single draws Z_s")
    right.axvline(averaged, color="C3", label=f"MC average ({averaged:.3f})")
    right.set(xlabel="accuracy", ylabel="draws", title=f"accuracy over {len(per_draw)} draws")
    right.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig
