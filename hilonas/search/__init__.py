"""The search: study setup, the objective a worker runs, executors (local and Ray) and the driver.

Only this package imports optuna; only :mod:`hilonas.search.ray_executor` imports ray.
"""
