"""benchmarks/encoder_kernels.py prints a row per default dataset with four ratios."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_kernels.py"


def test_encoder_kernels_prints_ours_over_torchs_per_dataset(capsys):
    spec = importlib.util.spec_from_file_location("encoder_kernels_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--batch", "4", "--train-batch", "2", "--repeats", "5"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(module.LENGTHS)
    for name, line in rows.items():
        cells = line.split()[2:]
        assert int(line.split()[1]) == module.LENGTHS[name]
        ratios = [c for c in cells if c.endswith("x")]
        assert len(ratios) == 4
        pairs = [c for c in cells if "/" in c]
        for pair, ratio in zip(pairs, ratios):
            ours, theirs = (float(v) for v in pair.split("/"))  # microseconds, 1 decimal
            assert ours > 0 and theirs > 0
            low, high = (ours - 0.05) / (theirs + 0.05), (ours + 0.05) / (theirs - 0.05)
            assert low - 0.005 <= float(ratio.rstrip("x")) <= high + 0.005
