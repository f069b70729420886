"""Kernels that make sparsity pay: sparse linear layers for training and inference, a fused random mask.

* :mod:`.sparse_linear` -- training a linear layer as values on the support of ``M``: CSR products
  forward and backward, the weight gradient sampled at the active positions only;
* :mod:`.inference` -- CSR / BSR linear layers for evaluation and prediction;
* :mod:`.fused_mask` -- CigL's ``Z ⊙ W`` with ``Z`` drawn inside a Triton kernel from a counter-based
  seed on CUDA (never stored; redrawn in the backward), the eager path elsewhere;
The training step that uses them (``cfg.kernels``) is the ``sparse-kernels`` engine
(:mod:`bayessparse.engines.sparse_kernels`); what each buys, measured side by side, is ``bayessparse bench
--setups kernels`` (:mod:`bayessparse.workflows.kernel_grid`); compact export of the values and their
positions is :mod:`bayessparse.workflows.export`.
"""
