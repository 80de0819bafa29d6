"""``python -m hilonas.cli``: the same as the ``hilonas`` console script."""
from hilonas.cli import main

main()
