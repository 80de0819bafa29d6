"""What several test folders share: the one tiny search space and the timing settings that make a build take seconds.

Import with ``from ..shared import TINY_SPACE, FAST`` (pytest runs in importlib mode: tests/ is a namespace package).
"""
from __future__ import annotations

# Two stages at 32 px: 32 architectures, 12 distinct blocks, a table that builds in a second or two.
TINY_SPACE = {
    "name": "test_tiny",
    "description": "two stages at 32 px",
    "fixed": {"img_size": 32, "patch_size": 4, "num_classes": 10},
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "mlp_ratio": 2, "mixer": "none"},
        {"depth": [1, 2], "dim": [16, 32], "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5,
         "window": [1, 2]},
    ],
}
# One pass of 2 timed calls, no re-measuring: a block costs milliseconds (fixtures, not measurements anyone reads).
FAST = {"warmup": 1, "repeats": 2, "max_attempts": 1, "rounds": 1, "chain": 2, "group": 3}


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of ``hilonas ARGS`` run in this process through ``main(argv)``."""
    import pytest

    from hilonas.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def assert_one_line_error(result, *needles):
    """``result`` of :func:`run_cli` is exit status 2 with one ``error: ...`` line holding every needle."""
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def count_rows(db, query: str) -> int:
    """``SELECT count(*) ...`` on a SQLite study read-only (0 while the file is missing or locked mid-write): what the
    kill -9 tests poll while a search runs in another process."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(query).fetchone()[0]
    except sqlite3.Error:
        return 0
