"""benchmarks/scaling.py runs and prints both tables (tiny sizes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"


def test_scaling_prints_a_row_per_length_and_size_with_growth(capsys):
    spec = importlib.util.spec_from_file_location("scaling_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--lengths", "4,8", "--sizes", "16,32", "--train", "16", "--length", "4",
                 "--epochs", "2"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.strip() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["4", "8", "16", "32"]
    assert len(rows[0]) == 4 and len(rows[1]) == 6  # the first row of a sweep has no growth
    for r in rows:
        map_s, dir_s, ratio = float(r[1]), float(r[2]), float(r[3].rstrip("x"))
        # the printed ratio is dir / map up to the rounding of the printed seconds (3 digits)
        assert map_s > 0 and dir_s > 0
        assert abs(ratio * map_s - dir_s) <= 0.0005 * (ratio + 1) + 0.005 * map_s
    assert "1. sequence length T doubles" in out and "2. training set doubles" in out
