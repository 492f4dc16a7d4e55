"""``shadowroute demo``: the whole system in one process, with real models, traffic and labels.

Needs the ``demo`` extra (scikit-learn). See ``docs/demo.md``.
"""
