"""Aggregation (DESIGN §5): how the group's pseudo-gradients become one, robustly.

- ``reducers.py``: ``mean``, ``trimmed_mean``, ``median``, ``centered_clip`` (BTARD's CenteredClip) over one
  tensor part, and ``reduce(name, parts, weights)``. Pure functions: ``swarm/averaging.py``'s part reducer calls
  them inside hivemind's all-reduce, once per part, with every sender's copy of that part. Which one runs is the
  training configuration's ``reducer`` (``koinon start --reducer``, or a governance ``set-config``), as the
  group's canonical members vote for it in the all-reduce's gather.

``REDUCERS`` (the names) lives here, without importing torch, so that ``koinon.config`` and the governance and
ledger commands that validate a configuration stay fast to import; ``reducers.py`` checks that it implements
exactly these names.
"""

REDUCERS = ("mean", "trimmed_mean", "median", "centered_clip")

__all__ = ["REDUCERS"]
