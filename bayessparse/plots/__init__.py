"""Plots of sweeps (PNG files written atomically, no pyplot state)."""

from bayessparse.plots.double_descent import plot_double_descent

__all__ = ["plot_double_descent"]
