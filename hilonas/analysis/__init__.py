"""Results of searches: tables (pandas), Pareto fronts (no plotting), plots (plotly imported only in plots.py)."""
