"""Benchmarks of casa_hub (not tests): ``scripts/bench.sh`` or ``python -m benchmarks.run``.

Each ``bench_*.py`` module here is one benchmark: it has ``TITLE``, ``ORDER``, ``NEEDS_FACILITY`` and
``run(ctx) -> list[Row]``. The runner finds them, runs them in ``ORDER`` and writes the table.
"""
