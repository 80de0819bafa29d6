"""The search: study setup, the objective a worker runs, executors (local and Ray) and the driver.

- :mod:`~hilonas.search.driver`: ``run_search(SearchSettings) -> SearchSummary``; the ask/route, evaluate, record loop.
- :mod:`~hilonas.search.objective`: ``evaluate(TrialPayload, data) -> TrialResult``, what a worker runs.
- :mod:`~hilonas.search.executor_base`: the ``Executor`` contract, ``EvaluationError``, the in-process executor.
- :mod:`~hilonas.search.ray_executor`: the Ray executor; :mod:`~hilonas.search.executors`: ``make_executor``.
- :mod:`~hilonas.search.study`: storage, sampler, resume and crash recovery; :mod:`~hilonas.search.landmarks`.
- :mod:`~hilonas.search.lease`: one driver per study (an OS lock beside a SQLite study, an expiring lease otherwise).
- :mod:`~hilonas.search.promote`: the front's members trained again at the reference budget after the trials.

Only this package imports optuna; only :mod:`hilonas.search.ray_executor` imports ray.
"""
