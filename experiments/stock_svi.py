"""Calibrated dynamic sparse training with a stock ``pyro.infer.SVI`` loop on MNIST-1D.

What a Pyro user writes, step by step:

1. Data and network: MNIST-1D (``bayessparse.data.load``) and an MLP from :mod:`models`.
2. Structure ``M``: a RigL method (:class:`SparseTraining` with :class:`GradientGrow`); its
   ``setup`` draws the ERK masks (zeroing the pruned weights) and the drop / grow schedule.
3. Model: :class:`SparseNetModel` -- ``W ~ N(0, 1/(N·wd))``, ``Z ~ Bernoulli(p₀)`` independent of
   it, ``y ~ Categorical(f(x; Z ⊙ W))``, every site scaled by ``1/N`` (a per-example ELBO).
4. Guide: :class:`SparseGuide` -- a point mass on the active weights of ``M``; ``vcigl`` learns
   ``q(Z)`` (keep probabilities ``sigmoid θ`` per layer), ``rigl`` has no ``Z`` (``p₀ = 1``).
5. Training: plain ``SVI(model, guide, ClippedAdam, Trace_ELBO())``. Every ``interval`` steps
   (``method.wants_update(t)``) the step computes the loss under a ``DenseGradients`` messenger,
   which records ``∂L/∂(Z⊙W)`` at the weights the network ran with, and hands it to
   ``guide.update_structure``: RigL drops the smallest ``|U|`` and grows the largest dense
   gradients, zeroing the grown weights and their Adam moments in the stock ``PyroOptim``.
6. Evaluation: ``bayessparse.ppl.predictive`` draws ``S`` networks from ``q`` and averages their
   class probabilities; accuracy, NLL and ECE come from :mod:`bayessparse.uncertainty`.

Run ``python experiments/stock_svi.py --steps 300``; ``main(argv)`` returns the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import models  # noqa: E402
from bayessparse.data import load  # noqa: E402
from bayessparse.ppl import SparseGuide, SparseNetModel, predictive  # noqa: E402
from bayessparse.ppl.svi import DenseGradients  # noqa: E402
from bayessparse.sparsity.growth import GradientGrow  # noqa: E402
from bayessparse.sparsity.training import SparseTraining  # noqa: E402
from bayessparse.uncertainty import accuracy, expected_calibration_error, nll  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="SVI steps")
    p.add_argument("--samples", type=int, default=16, help="posterior draws for the predictive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=("vcigl", "rigl"), default="vcigl", help="learned q(Z), or no Z")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--interval", type=int, default=25, help="steps between structure updates")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-data", type=int, default=5000, help="MNIST-1D size (train + val + test)")
    return p.parse_args(argv)


def minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches."""
    while True:
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            yield x[idx], y[idx]


def layer_keep(guide: SparseGuide) -> dict[str, float]:
    """Mean keep probability ``E_q[Z]`` per layer."""
    return {name: round(float(p.mean()), 6) for name, p in guide.keep_probabilities().items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    # 1. data and network
    data = load("mnist1d", n_samples=args.n_data)
    x_train, y_train = data.train.tensors
    x_test, y_test = data.test.tensors
    net = models.build("mlp", data.num_classes, data.input_shape)

    # 2. the structure M and its RigL schedule (the optimizer is only handed to update_structure)
    method = SparseTraining(name="rigl", sparsity=args.sparsity, layer_density="erk", generator=generator,
                            interval=args.interval, alpha=0.3, end_fraction=0.75, grow=GradientGrow())
    method.setup(net, None, total_steps=args.steps, steps_per_epoch=len(y_train) // args.batch_size)
    initial_masks = {n: m.clone() for n, m in method.masks.masks.items()}

    # 3.-4. model and guide
    learned = args.variant == "vcigl"
    # p0 = 0.99: the library's default prior keep probability (docs/results.md); q(Z) starts below it
    model = SparseNetModel(net, num_data=len(y_train), weight_decay=5e-4, keep_prob=0.99 if learned else 1.0)
    guide = SparseGuide(model, method.masks, family="map", keep="learned" if learned else "prior",
                        keep_init=0.95 if learned else None)
    keep_start = layer_keep(guide)

    # 5. stock SVI, with a structure update every `interval` steps
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "clip_norm": 10.0})
    elbo = pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    losses, changed = [], 0
    batches = minibatches(x_train, y_train, args.batch_size, generator)
    for t in range(args.steps):
        x, y = next(batches)
        if method.wants_update(t):
            with DenseGradients() as dense:
                losses.append(elbo.loss_and_grads(model, guide, x, y))
            changed += guide.update_structure(method, t, dense.grads, optim)["changed"]
            for _, p in pyro.get_param_store().named_parameters():  # no optimizer step on an update step
                p.grad = None
        else:
            losses.append(svi.step(x, y))

    # 6. posterior predictive on the test set
    probs = predictive(model, guide, x_test, args.samples, seed=args.seed)
    tenth = max(1, len(losses) // 10)
    moved = sum(int((initial_masks[n] != m).sum()) for n, m in method.masks.masks.items())
    result = {
        "variant": args.variant,
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
        "accuracy": accuracy(probs, y_test),
        "nll": nll(probs, y_test),
        "ece": expected_calibration_error(probs, y_test),
        "keep_start": keep_start,
        "keep_end": layer_keep(guide),
        "target_density": round(1.0 - args.sparsity, 6),
        "mask_density": method.masks.mask_density(),
        "positions_changed": changed,
        "masks_moved": moved,
    }
    return result


if __name__ == "__main__":
    out = main()
    print(f"{out['variant']}: loss {out['loss_first']:.3f} -> {out['loss_last']:.3f} (mean of first / last 10 %)")
    print(f"test accuracy {out['accuracy']:.4f}  NLL {out['nll']:.4f}  ECE {out['ece']:.4f}")
    print(f"mask density {out['mask_density']:.4f} (target {out['target_density']:.2f}); "
          f"{out['positions_changed']} positions changed by updates, {out['masks_moved']} differ from the start")
    print(f"keep probabilities at start {out['keep_start']}")
    print(f"keep probabilities at end   {out['keep_end']}")
