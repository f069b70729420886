"""CigL's thinning ``Z ⊙ M ⊙ W`` with ``Z`` drawn inside a fused kernel: never stored, redrawn in the backward.

Lei et al., "Calibrating the Rigged Lottery: Making All Tickets Reliable", ICLR 2023, train
``Z ⊙ M ⊙ W`` with a fresh ``Z_i ~ Bernoulli(p)`` at every step (``p = 1 - drop_rate``; see
:mod:`bayessparse.sparsity.random_mask` for the eager path). Here ``Z`` is a pure function of a
seed and the flat (row-major) position ``i`` of an entry:

    U_i = tl.rand(seed, i)          Philox4x32-10 (Salmon et al., SC 2011) on the counter
                                    (i mod 2^32, i div 2^32, 0, 0) with the key (seed mod 2^32,
                                    seed div 2^32); its first output word x, read as int32, is
                                    folded to v = x if x >= 0 else ~x and U_i = fl32(fl32(v) · s),
                                    s = fl32(4.6566127342e-10), so that U_i ∈ [0, 1);
    Z_i = [U_i < p]                 the convention of the eager path (it drops where U >= p).

The forward writes ``Z ⊙ M ⊙ W`` in one pass over ``W`` (one Triton kernel on CUDA); the backward
launches the same kernel on the incoming gradient, regenerating ``Z`` from ``(seed, i)``, and
returns ``Z ⊙ M ⊙ ∇`` -- only kept weights get a gradient. No ``1/p`` rescaling, as in CigL.
Convolutions and linear layers alike then compute with the thinned weight by their usual kernels
(cuDNN / cuBLAS): ``F.conv2d(x, FusedThin.apply(w, seed, p))``.

Elsewhere (a CPU tensor, no Triton) the same ``U`` comes from :func:`uniform`, a PyTorch
Philox4x32-10 in int64 arithmetic that reproduces ``tl.rand`` bit for bit (tested against the
kernel under ``TRITON_INTERPRET=1`` and against the Random123 known-answer vectors): CPU and CUDA
runs draw the very same ``Z``. It costs some 250 int64 passes over the tensor (about 0.5 s per
million entries on one core), so CPU training keeps the eager path; this one is for reference,
tests and the odd CPU call.

Training with it (the integration behind ``cfg.fused_mask``)::

    weights = prunable_weights(model)                    # fixed order: layer l is the l-th entry
    with fused_forward(model, weights, run_seed, step, keep, dense_grad=method.wants_update(step)):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    ...                                                  # update step: drop / grow as usual; else:
    masks.mask_grads_()
    with hold_dropped(weights, run_seed, step, keep):
        optimizer.step()

Layer ``l`` at step ``t`` uses ``seed = layer_seed(run_seed, t, l)``, a 62-bit SplitMix64 mix: a
resumed run only needs ``run_seed`` and the step counter to redraw exactly the same masks (no
generator state to save). :func:`hold_dropped` gives the optimizer step the eager path's
semantics: weights under ``Z = 0`` keep their values exactly, weight decay and momentum included
(a zero gradient alone would still let both move them). ``dense_grad=True`` leaves the gradient
with respect to the thinned weight at every position, as the eager path does, which RigL's
gradient growth reads on mask-update steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # a torch build without Triton: everything runs on the PyTorch path
    triton = None

__all__ = [
    "INTERPRETED",
    "FusedThin",
    "draw_keep",
    "fused_forward",
    "hold_dropped",
    "layer_seed",
    "philox4x32",
    "thin",
    "uniform",
    "uses_kernel",
]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_PHILOX_ROUND = (0xD2511F53, 0xCD9E8D57)  # multipliers of Philox4x32 (Random123; Triton's random.py)
_PHILOX_KEY = (0x9E3779B9, 0xBB67AE85)  # Weyl increments of the key
_PHILOX_ROUNDS = 10
_UNIFORM_SCALE = 4.6566127342e-10  # tl.rand's int32 -> [0, 1) scale
_CHUNK = 1 << 20  # PyTorch path: entries per chunk (bounds the int64 temporaries to ~60 MB)
_BLOCK = 1024  # entries per program on a GPU
_INTERPRETER_BLOCK = 1 << 14  # the interpreter runs programs one by one in Python: fewer, larger ones


# ---------------------------------------------------------------------------------------------- seeds
def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea and Flood, OOPSLA 2014): a bijection of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def layer_seed(run_seed: int, step: int, layer: int) -> int:
    """The Philox key of layer ``layer`` at step ``step``: ``h(h(h(run_seed) ⊕ step) ⊕ layer) mod 2^62``.

    ``h`` is SplitMix64's finaliser. Pure integer arithmetic, so the seed of a step is the same on
    every machine and after every resume; distinct (step, layer) pairs give unrelated Philox keys.
    """
    h = _splitmix64(_splitmix64(_splitmix64(int(run_seed) & _MASK64) ^ int(step)) ^ int(layer))
    return h & ((1 << 62) - 1)


def _check(seed: int, keep: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep probability must be in [0, 1], got {keep!r}")


# ------------------------------------------------------------------------------ the PyTorch Philox
def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a · b`` for a 32-bit constant ``a`` and int64 ``b ∈ [0, 2^32)``.

    ``b = 2^16 b_h + b_l``: the partial products stay below ``2^48``, so int64 never overflows.
    """
    hi_part, lo_part = a * (b >> 16), a * (b & 0xFFFF)
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & _MASK32
    return hi, lo


def philox4x32(key: tuple[int, int], counter: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 (Salmon et al., SC 2011) on int64 tensors holding 32-bit words; the four output words.

    One round maps ``(c0, c1, c2, c3)`` to ``(hi(B·c2) ⊕ c1 ⊕ k0, lo(B·c2), hi(A·c0) ⊕ c3 ⊕ k1, lo(A·c0))``
    and bumps the key ``(k0, k1)`` by the Weyl constants, exactly as Random123 and Triton's ``philox_impl``.
    """
    (k0, k1), (c0, c1, c2, c3) = key, counter
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo(_PHILOX_ROUND[1], c2)
        hi_a, lo_a = _mulhilo(_PHILOX_ROUND[0], c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY[0]) & _MASK32, (k1 + _PHILOX_KEY[1]) & _MASK32
    return c0, c1, c2, c3


def _random_word(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """``tl.randint(seed, offsets)``: the first word of Philox on ``(offset_lo, offset_hi, 0, 0)``, key ``(seed_lo, seed_hi)``."""
    zero = torch.zeros_like(offsets)
    counter = (offsets & _MASK32, offsets >> 32, zero, zero)
    return philox4x32((seed & _MASK32, (seed >> 32) & _MASK32), counter)[0]


def _to_uniform(word: torch.Tensor) -> torch.Tensor:
    """``tl.rand``'s map of a 32-bit word to ``[0, 1)``: as int32, ``v = x`` or ``~x``, then ``fl32(v) · s``."""
    folded = torch.where(word < 2**31, word, _MASK32 - word)  # ~x of a negative int32 x = 2^32 - 1 - word
    return folded.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=word.device)


def uniform(seed: int, numel: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """``U_i = tl.rand(seed, i)`` for ``i = start, ..., start + numel - 1``, in PyTorch (float32, bit-exact).

    Integer arithmetic in int64 and one IEEE float32 product: any device gives the same bits.
    """
    _check(seed, 0.0)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    for lo in range(0, numel, _CHUNK):
        hi = min(lo + _CHUNK, numel)
        offsets = torch.arange(start + lo, start + hi, dtype=torch.int64, device=device)
        out[lo:hi] = _to_uniform(_random_word(seed, offsets))
    return out


# ----------------------------------------------------------------------------------- the kernel
if triton is not None:

    @triton.jit(do_not_specialize=["seed"])
    def _thin_kernel(x_ptr, mask_ptr, out_ptr, n, seed, keep, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
        """``out_i = x_i`` where ``tl.rand(seed, i) < keep`` (and ``mask_i != 0``), else ``0``."""
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        x = tl.load(x_ptr + offsets, mask=inside)
        kept = tl.rand(seed, offsets) < keep
        if HAS_MASK:
            kept = kept & (tl.load(mask_ptr + offsets, mask=inside, other=0) != 0)
        tl.store(out_ptr + offsets, tl.where(kept, x, tl.zeros_like(x)), mask=inside)


#: Whether the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1`` when this module was imported).
INTERPRETED = triton is not None and type(_thin_kernel).__name__ == "InterpretedFunction"


def uses_kernel(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` are thinned by the Triton kernel: CUDA with Triton, or any under the interpreter."""
    return triton is not None and (torch.device(device).type == "cuda" or INTERPRETED)


def _launch(x: torch.Tensor, seed: int, keep: float, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    if mask is not None:
        mask = mask.contiguous()
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    n, block = x.numel(), _INTERPRETER_BLOCK if INTERPRETED else _BLOCK
    if n:  # Z depends on (seed, i) alone, not on the block size
        _thin_kernel[(triton.cdiv(n, block),)](x, x if mask is None else mask, out, n, seed, float(keep),
                                               HAS_MASK=mask is not None, BLOCK=block)
    return out


def _thin_torch(x: torch.Tensor, seed: int, keep: float, mask: torch.Tensor | None) -> torch.Tensor:
    kept = uniform(seed, x.numel(), x.device).view(x.shape) < torch.tensor(keep, dtype=torch.float32)
    if mask is not None:
        kept &= mask != 0
    return torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device))


# ------------------------------------------------------------------------------------ public API
def thin(x: torch.Tensor, seed: int, keep: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``Z ⊙ M ⊙ x`` (``M = 1`` when ``mask`` is ``None``) with ``Z_i = [tl.rand(seed, i) < keep]``; not differentiable.

    The Triton kernel where :func:`uses_kernel`, else the PyTorch Philox: the same result bit for
    bit. Dropped entries are ``+0``. ``x`` is read in row-major order (a non-contiguous tensor is
    copied) and the result is contiguous.
    """
    _check(seed, keep)
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from {tuple(x.shape)}")
    if uses_kernel(x.device):
        return _launch(x, seed, keep, mask)
    return _thin_torch(x, seed, keep, mask)


def draw_keep(seed: int, shape: Sequence[int] | torch.Size, keep: float,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The boolean ``Z`` that :func:`thin` and :class:`FusedThin` use for ``(seed, keep)`` on a tensor of ``shape``."""
    ones = torch.ones(tuple(shape), dtype=torch.uint8, device=device)
    return thin(ones, seed, keep).bool()


class FusedThin(torch.autograd.Function):
    """``FusedThin.apply(weight, seed, keep, mask=None, dense_grad=False) = Z ⊙ M ⊙ W``, differentiable in ``W``.

    Forward: one pass of :func:`thin`. Backward: :func:`thin` again on the incoming gradient ``g``,
    which redraws the same ``Z`` from ``(seed, i)``: ``∂L/∂W = Z ⊙ M ⊙ g``, zero for dropped
    weights. With ``dense_grad=True`` the backward returns ``g`` itself, the gradient with respect
    to the thinned weight at every position, as the eager path's in-place thinning leaves it.
    Nothing but the mask (if any) is saved for the backward.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, seed: int, keep: float, mask: torch.Tensor | None = None,
                dense_grad: bool = False) -> torch.Tensor:
        ctx.seed, ctx.keep, ctx.dense_grad = seed, keep, dense_grad
        ctx.save_for_backward(mask)
        return thin(weight, seed, keep, mask)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        if not ctx.dense_grad:
            grad = thin(grad, ctx.seed, ctx.keep, mask)
        return grad, None, None, None, None


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


@contextlib.contextmanager
def fused_forward(model: nn.Module, weights: Mapping[str, nn.Parameter], run_seed: int, step: int, keep: float,
                  *, dense_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, ``model`` computes with ``FusedThin.apply(W_l, layer_seed(run_seed, step, l), keep)``.

    ``weights`` maps parameter names of ``model`` (``"<module>.weight"``, e.g.
    :func:`~bayessparse.sparsity.density.prunable_weights`) to the parameters; its order numbers the
    layers, so pass the same mapping at every step. On entry each weight is thinned once and put in
    its module's parameter slot for the block (a plain swap: unlike ``torch.nn.utils.parametrize``
    it builds no new module classes per step); on exit the parameters are back. The autograd graph
    keeps the thinned tensors, so ``backward`` may run inside or after the block; gradients reach
    the parameters. Yields the thinned tensors by name.
    """
    slots = {name: _slot(model, name) for name in weights}
    for name, (module, attr) in slots.items():
        if module._parameters.get(attr) is not weights[name]:
            raise ValueError(f"{name} is not a parameter of the model")
    thinned = {
        name: FusedThin.apply(w, layer_seed(run_seed, step, layer), keep, None, dense_grad)
        for layer, (name, w) in enumerate(weights.items())
    }
    try:
        for name, (module, attr) in slots.items():
            module._parameters[attr] = thinned[name]
        yield thinned
    finally:
        for name, (module, attr) in slots.items():
            module._parameters[attr] = weights[name]


@contextlib.contextmanager
def hold_dropped(weights: Mapping[str, nn.Parameter], run_seed: int, step: int, keep: float) -> Iterator[None]:
    """Around the optimizer step of :func:`fused_forward`'s step: weights under ``Z = 0`` keep their values.

    As the eager :meth:`~bayessparse.sparsity.random_mask.RandomMask.use_thinned_` / ``merge_``: on
    entry the dropped weights (and their gradients) are zeroed, so the step sees the thinned
    network; on exit their old values are written back. Momentum buffers evolve as on the eager
    path. ``Z`` is redrawn from the same seeds. For the step only, a copy of each weight and its
    ``Z`` are held (dense, so that the GPU never waits for a count of dropped entries).
    """
    held = []
    with torch.no_grad():
        for layer, w in enumerate(weights.values()):
            dropped = ~draw_keep(layer_seed(run_seed, step, layer), w.shape, keep, w.device)
            held.append((w, dropped, w.detach().clone()))
            w.masked_fill_(dropped, 0)
            if w.grad is not None:
                w.grad.masked_fill_(dropped, 0)
    try:
        yield
    finally:
        with torch.no_grad():
            for w, dropped, old in held:
                w.copy_(torch.where(dropped, old, w))
