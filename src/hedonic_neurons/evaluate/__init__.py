"""Evaluation of partitions: which coalitions matter, against chance.

* :mod:`.layer` — :func:`~.layer.evaluate_layer`, one layer's whole evaluation (selection, the
  attribution baseline, the random-set null, the batched passes, every registered evaluation);
* :mod:`.base` — the :class:`~.base.Evaluation` protocol and the :data:`~.base.EVALUATIONS`
  registry; :mod:`.builtin` — ``effects``, ``null``, ``synergy``;
* :mod:`.measures`, :mod:`.null`, :mod:`.select`, :mod:`.attribution`, :mod:`.passes`,
  :mod:`.stats` — the pieces; :mod:`.ood` — the legacy OOD-drop table;
* :mod:`.regression` — alignment and ridge R² of coalition activations.
"""
