"""bayessparse: calibrated dynamic sparse training, framed as Bayesian inference on Pyro."""

__version__ = "0.1.0"
