"""The fused random mask: Philox bit for bit, ``Z ⊙ W`` forward and backward, training as the eager path.

The module's tests run on whichever path the process has: the Triton kernel under
``TRITON_INTERPRET=1`` or on CUDA, else the PyTorch Philox. ``test_interpreted`` reruns this file
in a subprocess with the interpreter on, so a plain CPU run covers both paths; tests that compare
the kernel with the PyTorch generator skip where there is no kernel.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayessparse.kernels import fused_mask as fm
from bayessparse.sparsity.density import prunable_weights
from bayessparse.sparsity.masks import MaskSet
from bayessparse.sparsity.random_mask import RandomMask

INTERPRETED = fm.INTERPRETED
CUDA = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if CUDA else "cpu"
KERNEL = fm.uses_kernel(DEVICE)
needs_kernel = pytest.mark.skipif(not KERNEL, reason="the Triton kernel runs on CUDA or under TRITON_INTERPRET=1")


def gpu(test):
    """GPU-only: marked ``gpu`` and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs CUDA")(test))


if fm.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _rand_kernel(out_ptr, n, start, seed, BLOCK: tl.constexpr):
        """``out[i] = tl.rand(seed, start + i)``."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, tl.rand(seed, start + i.to(tl.int64)), mask=i < n)


def _kernel_uniform(seed: int, n: int, start: int = 0) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.float32, device=DEVICE)
    _rand_kernel[(triton.cdiv(n, 1024),)](out, n, start, seed, BLOCK=1024)
    return out


def _binomial_ok(kept: torch.Tensor, keep: float, sigmas: float = 5.0) -> bool:
    n = kept.numel()
    return abs(kept.float().mean().item() - keep) <= sigmas * math.sqrt(keep * (1 - keep) / n) + 1e-12


# --------------------------------------------------------------------------------- the generator
@pytest.mark.parametrize("key, counter, expected", [
    ((0, 0), (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0xA4093822, 0x299F31D0), (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(key, counter, expected):
    """Random123's known-answer vectors for Philox4x32-10."""
    out = fm.philox4x32(key, [torch.tensor([c], dtype=torch.int64) for c in counter])
    assert [int(o) for o in out] == list(expected)


def test_uniform_is_tl_rand_convention():
    """``U_0`` for seed 0 is the first Philox word of counter 0 (KAT above), scaled as ``tl.rand`` does."""
    expected = torch.tensor(0x6627E8D5, dtype=torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)
    u = fm.uniform(0, 100_000)
    assert u[0].item() == expected.item()
    assert u.dtype == torch.float32 and 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())


def test_uniform_chunks_and_offsets(monkeypatch):
    """The value at position ``i`` does not depend on chunking or on where the draw starts."""
    whole = fm.uniform(7, 1000)
    monkeypatch.setattr(fm, "_CHUNK", 64)
    assert torch.equal(fm.uniform(7, 1000), whole)
    assert torch.equal(fm.uniform(7, 300, start=700), whole[700:])


def test_layer_seed():
    seeds = {fm.layer_seed(3, step, layer) for step in range(50) for layer in range(20)}
    assert len(seeds) == 1000 and all(0 <= s < 2**62 for s in seeds)
    assert fm.layer_seed(3, 10, 2) == fm.layer_seed(3, 10, 2) != fm.layer_seed(4, 10, 2)


def test_bad_arguments():
    w = torch.ones(4)
    for seed in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            fm.thin(w, seed, 0.5)
    for keep in (-0.1, 1.1):
        with pytest.raises(ValueError, match="keep"):
            fm.thin(w, 0, keep)
    with pytest.raises(ValueError, match="mask shape"):
        fm.thin(w, 0, 0.5, torch.ones(5))


@needs_kernel
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 + 5, 2**62 - 1, 2**63 - 1])
def test_kernel_uniform_bit_exact(seed):
    """``tl.rand`` in a Triton kernel and :func:`uniform` agree bit for bit, past offset ``2^32`` too."""
    assert torch.equal(_kernel_uniform(seed, 3000).cpu(), fm.uniform(seed, 3000))
    start = 2**32 - 1000
    assert torch.equal(_kernel_uniform(seed, 3000, start).cpu(), fm.uniform(seed, 3000, start=start))


@needs_kernel
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.99, 1.0])
def test_kernel_draws_the_reference_z(keep):
    seed = fm.layer_seed(0, 5, 1)
    z = fm.draw_keep(seed, (33, 17, 3, 3), keep, DEVICE)
    assert z.dtype == torch.bool and z.shape == (33, 17, 3, 3)
    assert torch.equal(z.cpu(), (fm.uniform(seed, z.numel()) < keep).view(z.shape))


# ------------------------------------------------------------------------------------ thinning
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_thin_is_z_times_w(dtype, masked):
    """``thin(W) = Z ⊙ M ⊙ W`` with ``Z = draw_keep(...)``; dropped entries exactly ``+0``."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 9, 3, 3, generator=g).to(DEVICE, dtype)
    mask = (torch.rand(w.shape, generator=g) < 0.4).to(DEVICE, dtype) if masked else None
    seed, keep = 2**62 - 17, 0.7
    z = fm.draw_keep(seed, w.shape, keep, DEVICE)
    kept = z & (mask != 0) if masked else z
    out = fm.thin(w, seed, keep, mask)
    assert out.dtype == dtype and torch.equal(out, torch.where(kept, w, 0))
    assert not torch.signbit(out[~kept]).any()
    if masked:  # a boolean mask works alike
        assert torch.equal(fm.thin(w, seed, keep, mask.bool()), out)


@needs_kernel
def test_kernel_matches_pytorch_path():
    """The fallback gives the kernel's result bit for bit (it is what a CPU run computes)."""
    w = torch.randn(1000, 37, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(w.shape) < 0.5).float()
    for m in (None, mask):
        kernel = fm.thin(w.to(DEVICE), 99, 0.8, None if m is None else m.to(DEVICE)).cpu()
        assert torch.equal(kernel, fm._thin_torch(w, 99, 0.8, m))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_kept_fraction_is_binomial(keep):
    n = 2**16 if INTERPRETED else 2**20
    z = fm.draw_keep(fm.layer_seed(1, 0, 0), (n,), keep, DEVICE)
    assert _binomial_ok(z, keep)


def test_seeds():
    """The same seed gives the same ``Z``; other seeds (layers, steps) disagree on about ``2p(1-p)`` of entries."""
    n, keep = 2**15, 0.5
    shape = (n,)
    z = fm.draw_keep(fm.layer_seed(0, 3, 0), shape, keep, DEVICE)
    assert torch.equal(z, fm.draw_keep(fm.layer_seed(0, 3, 0), shape, keep, DEVICE))
    for other in (fm.layer_seed(0, 3, 1), fm.layer_seed(0, 4, 0), fm.layer_seed(1, 3, 0)):
        assert _binomial_ok(z != fm.draw_keep(other, shape, keep, DEVICE), 2 * keep * (1 - keep))


def test_empty_and_extreme():
    assert fm.thin(torch.empty(0, 3, device=DEVICE), 1, 0.5).shape == (0, 3)
    w = torch.randn(500, device=DEVICE)
    assert torch.equal(fm.thin(w, 1, 1.0), w)
    assert torch.equal(fm.thin(w, 1, 0.0), torch.zeros_like(w))


# ------------------------------------------------------------------------------------- backward
def _layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(30, 20).to(DEVICE), torch.randn(8, 30, device=DEVICE)
    return nn.Conv2d(4, 6, 3, padding=1).to(DEVICE), torch.randn(2, 4, 7, 7, device=DEVICE)


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, padding=1)


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("dense_grad", [False, True])
def test_backward_is_eager_gradient(kind, dense_grad):
    """``∇_W L(FusedThin(W))`` is the eager ``∇_W L(Z ⊙ W)``; ``dense_grad`` gives ``∇_{Z⊙W} L`` instead."""
    layer, x = _layer(kind)
    seed, keep = fm.layer_seed(0, 0, 0), 0.6
    weight = layer.weight
    z = fm.draw_keep(seed, weight.shape, keep, DEVICE).to(weight.dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    thinned = fm.FusedThin.apply(weight, seed, keep, None, dense_grad)
    out = _apply(layer, x1, thinned)
    reference_w = weight.detach().clone().requires_grad_()
    eager_thinned = z * reference_w
    eager_thinned.retain_grad()
    reference = _apply(layer, x2, eager_thinned)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    (reference * r).sum().backward()
    assert torch.equal(thinned.detach(), eager_thinned.detach())
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad)
    expected = eager_thinned.grad if dense_grad else reference_w.grad
    torch.testing.assert_close(weight.grad, expected)
    if not dense_grad:
        assert torch.all(weight.grad[z == 0] == 0)


def test_backward_with_mask():
    layer, x = _layer("linear")
    mask = (torch.rand(layer.weight.shape, device=DEVICE) < 0.5).float()
    out = F.linear(x, fm.FusedThin.apply(layer.weight, 11, 0.8, mask), layer.bias)
    out.sum().backward()
    kept = fm.draw_keep(11, layer.weight.shape, 0.8, DEVICE) & (mask != 0)
    expected = torch.where(kept, x.sum(0).expand_as(layer.weight), 0)
    torch.testing.assert_close(layer.weight.grad, expected)


# ----------------------------------------------------------------------- training, fused vs eager
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def _setup() -> tuple[nn.Module, MaskSet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net().to(DEVICE)
    masks = MaskSet(model, {"conv.weight": 0.5, "fc.weight": 0.3}, torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    return model, masks, optimizer


def _eager_step(model, masks, optimizer, random_mask, kept, x, y) -> None:
    """CigL's step (:mod:`bayessparse.sparsity.cigl`) with ``Z`` given: thin, backward, restore, masked step."""
    optimizer.zero_grad(set_to_none=True)
    random_mask.use_draw(kept)
    random_mask.use_thinned_()  # no gradients yet: zeroes the dropped weights, as ``thin_``
    F.cross_entropy(model(x), y).backward()
    random_mask.restore_()
    masks.mask_grads_()
    random_mask.use_thinned_()
    optimizer.step()
    random_mask.merge_()


def test_fused_training_matches_eager():
    """Three SGD steps (momentum, weight decay) of fused thinning equal CigL's eager steps with the same ``Z``."""
    eager_model, eager_masks, eager_opt = _setup()
    model, masks, optimizer = _setup()
    random_mask = RandomMask(eager_masks, 0.3, seed=0)
    weights, run_seed, keep = prunable_weights(model), 42, 0.7
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x, y = torch.randn(16, 3, 6, 6, generator=g).to(DEVICE), torch.randint(5, (16,), generator=g).to(DEVICE)
        kept = [fm.draw_keep(fm.layer_seed(run_seed, step, layer), m.shape, keep, DEVICE).to(m.dtype) * m
                for layer, m in enumerate(eager_masks.masks.values())]
        _eager_step(eager_model, eager_masks, eager_opt, random_mask, kept, x, y)
        optimizer.zero_grad(set_to_none=True)
        with fm.fused_forward(model, weights, run_seed, step, keep) as thinned:
            assert model.conv.weight is thinned["conv.weight"] and model.fc.weight is thinned["fc.weight"]
            F.cross_entropy(model(x), y).backward()
        masks.mask_grads_()
        with fm.hold_dropped(weights, run_seed, step, keep):
            optimizer.step()
    for (name, a), b in zip(eager_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(eager_opt.state[a]["momentum_buffer"], optimizer.state[b]["momentum_buffer"],
                                   rtol=0, atol=0, msg=name)


def test_dense_grad_is_eager_update_gradient():
    """On a mask-update step the eager path leaves ``∇_{Z⊙W} L`` in ``.grad``; ``dense_grad=True`` does too."""
    eager_model, eager_masks, _ = _setup()
    model, _, _ = _setup()
    random_mask = RandomMask(eager_masks, 0.3, seed=0)
    weights, keep = prunable_weights(model), 0.7
    x, y = torch.randn(16, 3, 6, 6, device=DEVICE), torch.randint(5, (16,), device=DEVICE)
    kept = [fm.draw_keep(fm.layer_seed(5, 9, layer), m.shape, keep, DEVICE).to(m.dtype) * m
            for layer, m in enumerate(eager_masks.masks.values())]
    random_mask.use_draw(kept)
    random_mask.use_thinned_()
    F.cross_entropy(eager_model(x), y).backward()
    random_mask.restore_()
    with fm.fused_forward(model, weights, 5, 9, keep, dense_grad=True):
        F.cross_entropy(model(x), y).backward()
    for a, b in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_fused_forward_restores_parameters():
    model, _, _ = _setup()
    weights = prunable_weights(model)
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with fm.fused_forward(model, weights, 0, 0, 0.5):
            raise RuntimeError("boom")
    assert [n for n, _ in model.named_parameters()] == names
    assert all(model.get_parameter(n) is w for n, w in weights.items())
    with pytest.raises(ValueError, match="not a parameter"):
        with fm.fused_forward(model, {"conv.weight": nn.Parameter(torch.ones(1))}, 0, 0, 0.5):
            pass


def test_hold_dropped_keeps_values():
    """Weight decay alone would move dropped weights; inside :func:`hold_dropped` they stay exactly."""
    model, _, _ = _setup()
    weights = prunable_weights(model)
    before = {n: w.detach().clone() for n, w in weights.items()}
    optimizer = torch.optim.SGD(weights.values(), lr=0.5, weight_decay=0.1)
    for w in weights.values():
        w.grad = torch.zeros_like(w)
    with fm.hold_dropped(weights, 3, 0, 0.5):
        optimizer.step()
    for layer, (name, w) in enumerate(weights.items()):
        z = fm.draw_keep(fm.layer_seed(3, 0, layer), w.shape, 0.5, DEVICE)
        assert torch.equal(w[~z], before[name][~z])
        torch.testing.assert_close(w[z], before[name][z] * 0.95)


# ------------------------------------------------------------------------------ the interpreter
@pytest.mark.skipif(INTERPRETED or fm.triton is None, reason="already interpreted, or no Triton")
def test_interpreted():
    """This file again with ``TRITON_INTERPRET=1`` (read when Triton kernels are defined, so in a fresh process)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not test_interpreted and not gpu",
         str(Path(__file__).resolve())],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "passed" in summary and "skipped" not in summary, result.stdout[-2000:]  # the kernel tests ran


# ---------------------------------------------------------------------------------------- GPU only
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kernel_equals_cpu_fallback(dtype):
    w = torch.randn(512, 256, 3, 3).to(dtype)
    assert torch.equal(fm.thin(w.cuda(), 2**40 + 3, 0.9).cpu(), fm.thin(w, 2**40 + 3, 0.9))


@gpu
def test_gpu_fused_not_slower_than_eager_thinning():
    """Forward + backward thinning of a 25M-entry weight against ``torch.rand`` + ``where`` twice."""
    w = torch.randn(25_000_000, device="cuda")
    keep = 0.99

    def fused():
        fm.thin(fm.thin(w, 7, keep), 7, keep)

    def eager():
        z = torch.rand(w.shape, device="cuda") < keep
        torch.where(z, torch.where(z, w, 0), 0)

    def seconds(fn):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    assert seconds(fused) < 1.5 * seconds(eager)
