"""Which training numerics produced a result.

``TRAINING_VERSION`` names the numerics of every training this package does (data order, the
step, masks, averaging, the Pyro engine, the deep GP baselines, evaluation). Every finished run
records it in its ``metrics.json`` (an IMP sweep in each round's record), and the study retrains a
cached cell whose recorded version differs from the current one, so a report never mixes runs
trained by different code.

Bump it in the same commit as any change that moves a trained number, however slightly (a
reordered reduction, a new default, a fix in the data split). ``tests/test_training_version.py``
retrains a committed cell of ``docs/results.md`` and fails when its numbers moved while the
version stayed, and when the committed report was made by another version.
"""

TRAINING_VERSION = 1

__all__ = ["TRAINING_VERSION"]
