"""A linear layer trained as values on the support of its mask ``M``: no FLOP on a pruned weight.

For a weight ``W`` (``out × in``) with ``nnz`` active positions ``(r_k, c_k)`` (row-major order, the order
of ``M.nonzero()``) and values ``v_k``, the layer computes ``y = x Wᵀ`` with ``W = Σ_k v_k e_{r_k} e_{c_k}ᵀ``:

* forward: ``yᵀ = W xᵀ``, a CSR × dense product (``nnz · B`` multiply-adds instead of ``out · in · B``);
* backward, input: ``∂L/∂x = (∂L/∂y) W``, i.e. ``(∂L/∂x)ᵀ = Wᵀ (∂L/∂y)ᵀ`` with ``Wᵀ`` kept as its own CSR
  (the same values, permuted to column-major order);
* backward, values: ``∂L/∂v_k = Σ_b (∂L/∂y)_{b r_k} x_{b c_k}``, the dense product ``(∂L/∂y)ᵀ x`` sampled at
  the active positions only (``torch.sparse.sampled_addmm``, an SDDMM): ``nnz · B`` multiply-adds again.

The dense gradient that RigL grows by is never formed here; the training step falls back to the dense
product on the (rare) mask-update steps that need it (:mod:`bayessparse.engines.sparse_kernels`).

References: Evci et al., "Rigging the Lottery", ICML 2020 (the dense gradient only at updates); the CSR
and SDDMM products are PyTorch's ``torch.sparse`` kernels (MKL on x86 CPUs, cuSPARSE on CUDA).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["SparseStructure", "sparse_linear"]


def _quiet_csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor without torch's one-time "beta" warning (the format is used deliberately)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _compressed(major: Tensor, n_major: int) -> Tensor:
    """CSR row pointers from sorted major indices."""
    counts = torch.bincount(major, minlength=n_major)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class SparseStructure:
    """The support of one ``out × in`` mask: active positions and the index arrays of ``W`` and ``Wᵀ`` as CSR.

    Attributes:
        flat: flat (row-major) indices of the active positions, ascending: value ``k`` sits at ``flat[k]``.
        shape: ``(out, in)``.
    """

    def __init__(self, mask: Tensor) -> None:
        if mask.dim() != 2:
            raise ValueError(f"a sparse linear layer needs a 2-d mask, got shape {tuple(mask.shape)}")
        out_features, in_features = mask.shape
        self.shape = (out_features, in_features)
        self.flat = mask.reshape(-1).nonzero().squeeze(1)
        rows, cols = self.flat // in_features, self.flat % in_features
        self.crow, self.col = _compressed(rows, out_features), cols
        self.t_order = torch.argsort(cols * out_features + rows)  # value order of Wᵀ's CSR (column-major)
        self.t_crow, self.t_col = _compressed(cols[self.t_order], in_features), rows[self.t_order]
        self._pattern = _quiet_csr(self.crow, self.col, torch.zeros(len(self.flat), device=mask.device), self.shape)

    @property
    def nnz(self) -> int:
        return len(self.flat)

    def matrix(self, values: Tensor) -> Tensor:
        """``W`` as a CSR tensor with these values."""
        return _quiet_csr(self.crow, self.col, values, self.shape)

    def transposed(self, values: Tensor) -> Tensor:
        """``Wᵀ`` as a CSR tensor."""
        return _quiet_csr(self.t_crow, self.t_col, values[self.t_order], (self.shape[1], self.shape[0]))

    def sampled_product(self, grad_out: Tensor, x: Tensor) -> Tensor:
        """``((∂L/∂y)ᵀ x)`` at the active positions, in value order (an SDDMM)."""
        pattern = self._pattern if self._pattern.dtype == x.dtype else self._pattern.to(x.dtype)
        product = torch.sparse.sampled_addmm(pattern, grad_out.t().contiguous(), x.contiguous(), beta=0.0)
        return product.values()

    def gather(self, weight: Tensor) -> Tensor:
        """The values of a dense weight on this support."""
        return weight.reshape(-1).take(self.flat)

    def scatter_(self, weight: Tensor, values: Tensor) -> None:
        """Write the values into a dense weight (its pruned positions are left as they are: zero)."""
        weight.view(-1).index_copy_(0, self.flat, values)


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, structure: SparseStructure) -> Tensor:
        ctx.save_for_backward(x, values)
        ctx.structure = structure
        return (structure.matrix(values) @ x.t()).t()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, values = ctx.saved_tensors
        structure: SparseStructure = ctx.structure
        grad_x = grad_v = None
        if ctx.needs_input_grad[0]:
            grad_x = (structure.transposed(values) @ grad_out.t()).t()
        if ctx.needs_input_grad[1]:
            grad_v = structure.sampled_product(grad_out, x)
        return grad_x, grad_v, None


def sparse_linear(x: Tensor, values: Tensor, structure: SparseStructure, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, W, bias)`` for the sparse ``W`` given by ``values`` on ``structure``; any leading dims."""
    lead = x.shape[:-1]
    y = _SparseLinear.apply(x.reshape(-1, x.shape[-1]), values, structure)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, structure.shape[0])
