"""Workflows: what the command line runs, one layer above the trainer (docs/architecture.md).

* :mod:`.compare` -- methods side by side on the same data and seeds: the table and the calibration figures;
* :mod:`.study` -- the reproduction study behind docs/results.md;
* :mod:`.ensembles` -- FreeTickets ensembles (DST, EDST) and their diversity;
* :mod:`.imp` -- iterative magnitude pruning with rewinding, the sparse double descent;
* :mod:`.evaluate` -- a finished run under Monte Carlo, temperature scaling, corruptions and OOD;
* :mod:`.predictors` -- what a finished run predicts, in the forms the papers compare, and its scorecard;
* :mod:`.bench` and :mod:`.kernel_grid` -- timings, measured side by side;
* :mod:`.export` -- the compact export of a finished run and its loader.

A workflow may import the trainer and everything below it, and other workflows; nothing below imports a
workflow.
"""
