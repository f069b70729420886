"""Sparse linear layers for evaluation and prediction: ``y = x Wᵀ + b`` with ``W`` stored as CSR (or BSR).

A sparse run keeps its pruned weights as exact zeros in dense tensors, so a dense product spends
``out · in · B`` multiply-adds per batch of ``B`` examples whatever the sparsity. :class:`CSRLinear`
holds ``W`` (``out × in``, ``nnz`` non-zeros) as a compressed-sparse-row tensor and computes

    ``yᵀ = b 1ᵀ + W xᵀ``  (``torch.addmm`` with a CSR first operand: ``nnz · B`` multiply-adds),

returning the transpose of the ``out × B`` result (a view: the next CSR layer reads it as its
contiguous ``xᵀ``). :func:`sparse_inference` copies a network and swaps in such a layer for every
``nn.Linear`` whose sparsity pays; convolutions are left as they are. Usage::

    from bayessparse.kernels.inference import sparse_inference
    fast = sparse_inference(model)                 # a copy, eval mode, no gradients
    probs, labels = predict_probs(fast, dataset)   # the dense model's predictions, within float rounding

**When CSR pays.** Measured with ``OMP_NUM_THREADS=1`` on a 2.8 GHz Xeon (PyTorch 2.14, MKL):
``nn.Linear`` against its :class:`CSRLinear` on a random unstructured support (as dynamic sparse
training leaves it), timed in alternation, median of 7-300 rounds, then the median of 3 passes.
Each entry is dense time / CSR time, so above 1 is a speed-up:

============= ===== ===== ===== ===== ===== ===== ===== =====
``out × in``  batch  1 %   2 %   5 %  10 %  20 %  30 %  50 %
============= ===== ===== ===== ===== ===== ===== ===== =====
256 × 256         1  0.71  0.70  0.67  0.58  0.46  0.37  0.27
256 × 256       256  2.12  1.98  1.64  1.24  0.79  0.56  0.71
512 × 512         1  1.40  1.29  1.08  0.81  0.54  0.38  0.26
512 × 512       256  3.51  2.96  2.10  1.67  0.82  0.62  0.41
1024 × 1024       1  3.05  2.40  1.56  0.93  0.50  0.34  0.22
1024 × 1024     256  4.51  4.29  2.55  1.54  0.88  0.62  0.40
2048 × 2048       1  6.05  3.97  1.88  1.07  0.62  0.43  0.27
2048 × 2048     256  5.84  4.42  2.22  1.24  0.65  0.44  0.24
4096 × 4096       1  7.66  4.73  2.11  1.12  0.58  0.38  0.24
4096 × 4096     256  7.43  4.35  2.01  1.10  0.57  0.36  0.19
============= ===== ===== ===== ===== ===== ===== ===== =====

Between 5 % and 10 % density the gain at batch 1 falls to about 1 (512²: 1.06 at 5 %, 0.91 at 7 %;
1024²: 1.26 at 5 %, 0.99 at 9 %); above 20 % the dense product always wins. The shape matters as
much as the density: at 5 % density, layers with few rows lose at both batch sizes (``10 × 1024``
0.52 / 0.51, ``10 × 32768`` 0.31 / 0.27, ``64 × 4096`` 0.71 / 0.74 at batch 1 / 256), tall thin
ones lose at batch 1 (``4096 × 64`` 0.71, ``2048 × 128`` 0.97, ``1024 × 40`` 0.53), and so do
small ones (``256 × 256`` above: a fixed cost of a few µs per call), while ``256 × 1024`` (1.06 /
2.02), ``1024 × 256`` (1.08 / 2.33) and ``256 × 4096`` (1.19 / 1.18) gain at both. Hence the
default rule (:func:`pays`): sparsity at least :data:`MIN_SPARSITY` (0.95), both sides at least
:data:`MIN_FEATURES` (256) and at least :data:`MIN_WEIGHTS` (``512 · 512``) weights. Every measured
layer that passes it ran 1.06× (512², batch 1) to 7.7× faster than dense; conversion of smaller,
thinner or denser layers can still pay at large batches (pass lower thresholds). The rule was
measured on a CPU; on CUDA (cuSPARSE) it is a default, not a measurement.

**CSR or BSR.** Block-sparse rows (BSR, dense ``k × k`` blocks) pay only for block-structured
weights. On the unstructured supports above, BSR with 4 × 4 blocks was 1.3-50× slower than CSR
(raw products, 256²-4096², 1-50 %). With fully dense 16 × 16 or 32 × 32 blocks at 5 % density, BSR
beat CSR at batch 1 (2048², 16 × 16: 3.2× vs 1.9× over dense) but not at batch 256 (2.9× vs
5.1×), and with half-filled blocks it was at best level with CSR. A layer does not know the batch
size it will see, so the layout is CSR unless asked for: ``layout="bsr"`` (blocks of
``blocksize``) is for block-pruned networks served one example at a time.

Inference only: the layers hold no parameters (nothing is learned through them), and
:func:`sparse_inference` returns the copy in eval mode with every remaining parameter frozen; run
it under ``torch.no_grad()`` as :func:`bayessparse.predict.predict_logits` does.

References: Gale, Zaharia, Young & Elsen, "Sparse GPU Kernels for Deep Learning" (SC 2020) on when
unstructured sparsity beats dense kernels; the CSR / BSR products are PyTorch's ``torch.sparse``
kernels (MKL on x86 CPUs, cuSPARSE on CUDA).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from bayessparse.errors import ConfigError

__all__ = ["CSRLinear", "sparse_inference", "pays", "MIN_SPARSITY", "MIN_FEATURES", "MIN_WEIGHTS", "LAYOUTS"]

#: Default: convert a linear layer whose fraction of zero weights is at least this (table above).
MIN_SPARSITY = 0.95
#: Default: ... whose inputs and outputs both number at least this ...
MIN_FEATURES = 256
#: Default: ... and that has at least this many weights (``out · in``), 512 x 512.
MIN_WEIGHTS = 512 * 512
#: Storage layouts of :class:`CSRLinear`.
LAYOUTS = ("csr", "bsr")


def _compressed(weight: Tensor, layout: str, blocksize: int) -> Tensor:
    """``weight`` as a CSR (or, when its shape divides into blocks, BSR) tensor, without torch's "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        if layout == "bsr" and weight.shape[0] % blocksize == 0 and weight.shape[1] % blocksize == 0:
            return weight.to_sparse_bsr(blocksize)
        return weight.to_sparse_csr()


class CSRLinear(nn.Module):
    """``y = x Wᵀ + b`` for inference, with ``W`` held as a sparse CSR (or BSR) tensor.

    Computes ``(b 1ᵀ + W xᵀ)ᵀ`` with one ``torch.addmm`` (no ``x`` copy: ``xᵀ`` is a view). Inputs of
    any rank ``(..., in_features)`` are flattened to ``(N, in_features)`` and the result reshaped
    back. Build one from a dense layer with :meth:`from_linear`; ``weight`` and ``bias`` are buffers
    (they move with ``.to(device)``), not parameters, so nothing is trained through the layer.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, layout: str = "csr", blocksize: int = 16) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if weight.dim() != 2 or weight.layout != torch.strided:
            raise ConfigError(f"weight must be a dense 2-d tensor, got shape {tuple(weight.shape)} ({weight.layout})")
        if blocksize < 1:
            raise ConfigError(f"blocksize must be >= 1, got {blocksize}")
        self.out_features, self.in_features = weight.shape
        self.nnz = int(torch.count_nonzero(weight))
        with torch.no_grad():
            self.register_buffer("weight", _compressed(weight.detach(), layout, blocksize))
            self.register_buffer("bias", None if bias is None else bias.detach().clone())
            # b as an (out, 1) column for addmm's broadcast, kept apart so that `bias` looks like nn.Linear's
            self.register_buffer("_bias_column", None if bias is None else self.bias.unsqueeze(1), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str = "csr", blocksize: int = 16) -> "CSRLinear":
        """The CSR twin of ``linear`` (same weights, same bias, on the same device)."""
        return cls(linear.weight, linear.bias, layout, blocksize)

    def __deepcopy__(self, memo: dict) -> "CSRLinear":
        """``copy.deepcopy`` (which cannot copy a CSR tensor's storage): the weight cloned, the rest as usual."""
        memo[id(self.weight)] = self.weight.clone()
        twin = self.__class__.__new__(self.__class__)
        memo[id(self)] = twin
        twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return twin

    @property
    def layout(self) -> str:
        return "bsr" if self.weight.layout == torch.sparse_bsr else "csr"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            return self.forward(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        if self.bias is None:
            return (self.weight @ x.T).T
        return torch.addmm(self._bias_column, self.weight, x.T).T

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"layout={self.layout}, bias={self.bias is not None}")


def _check_rule(min_sparsity: float, min_features: int, min_weights: int, layout: str, blocksize: int) -> None:
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) \
            or not 0.0 <= min_sparsity <= 1.0:  # also rejects NaN
        raise ConfigError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    for name, value in (("min_features", min_features), ("min_weights", min_weights)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConfigError(f"blocksize must be an integer >= 1, got {blocksize!r}")


def pays(linear: nn.Linear, min_sparsity: float = MIN_SPARSITY, min_features: int = MIN_FEATURES,
         min_weights: int = MIN_WEIGHTS) -> bool:
    """The conversion rule of the module docstring: sparsity ``>= min_sparsity`` (at most
    ``round((1 - min_sparsity) · out · in)`` non-zeros), ``min(out, in) >= min_features`` and
    ``out · in >= min_weights``; a layer without a single zero is never converted."""
    weight = linear.weight
    nnz, numel = int(torch.count_nonzero(weight)), weight.numel()
    allowed = round((1.0 - min_sparsity) * numel)  # whole weights: a layer pruned to round(d · N) counts as d
    return nnz < numel and nnz <= allowed and min(weight.shape) >= min_features and numel >= min_weights


def sparse_inference(model: nn.Module, min_sparsity: float = MIN_SPARSITY, min_features: int = MIN_FEATURES,
                     min_weights: int = MIN_WEIGHTS, *, layout: str = "csr", blocksize: int = 16) -> nn.Module:
    """A deep copy of ``model`` in eval mode, parameters frozen, with a :class:`CSRLinear` in place of
    every ``nn.Linear`` that :func:`pays` (defaults: the measured rule of the module docstring).

    Only modules of exactly type ``nn.Linear`` are replaced (a subclass may be read by its parent
    other than through ``forward``, e.g. attention's projection); a layer used at several places is
    replaced by one shared :class:`CSRLinear`. ``min_sparsity=0, min_features=0, min_weights=0``
    converts every linear layer with at least one zero weight. The predictions equal the dense
    model's up to float rounding (the sums run in another order).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_rule(min_sparsity, min_features, min_weights, layout, blocksize)
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    replaced: dict[int, CSRLinear] = {}
    for parent in list(fast.modules()):
        for name, child in list(parent._modules.items()):  # named_children() lists a repeated child once
            if type(child) is nn.Linear and (id(child) in replaced or pays(child, min_sparsity, min_features,
                                                                            min_weights)):
                if id(child) not in replaced:
                    replaced[id(child)] = CSRLinear.from_linear(child, layout, blocksize)
                setattr(parent, name, replaced[id(child)])
    return fast
