"""benchmarks/method_speed.py on the hf backbone: every method it can run is timed against
map on the same tiny random-init BERT, and those it cannot run are named with the reason."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "method_speed.py"


def test_method_speed_on_a_tiny_hf_model(capsys):
    spec = importlib.util.spec_from_file_location("method_speed_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--backbone", "hf", "--methods", "map,laplace,mfvi,mc_dropout@dropout=0.3",
                 "--epochs", "1", "--repeats", "1", "--max-train", "32"])
    out = capsys.readouterr().out
    assert "markov on the hf backbone (tiny random-init BERT" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[0] in ("map", "laplace", "mfvi")}
    assert set(rows) == {"map", "laplace", "mfvi"}
    assert float(rows["map"][1]) == 1.0  # map's own ratio
    assert all(float(seconds) > 0 and float(ratio) > 0 for seconds, ratio in rows.values())
    assert "laplace posterior fit:" in out
    assert "not run: mc_dropout@dropout=0.3: the 'hf' backbone has no dropout_rate hook" in out
