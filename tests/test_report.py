"""Reports: hand-computed aggregates, bold marks, row counts, PNGs, failures, run modes."""

from __future__ import annotations

import hashlib
import math
import re

import matplotlib.image
import pandas as pd
import pytest
from fake_results import OOD_SETS, SEVERITIES, SHIFT_KINDS, fake_result

from bayesbench.errors import StoreError
from bayesbench.report import aggregate_store, write_report
from bayesbench.report.leaderboard import markdown_table
from bayesbench.store import ResultStore

# map: accuracy 0.90/0.92/0.94 (mean 0.92, std 0.02), ece 0.10/0.12/0.14 (mean 0.12, std 0.02)
# vi:  accuracy 0.80/0.85/0.90 (mean 0.85, std 0.05), ece 0.02/0.03/0.04 (mean 0.03, std 0.01)
RUNS = {"map": ([0.90, 0.92, 0.94], [0.10, 0.12, 0.14]),
        "vi": ([0.80, 0.85, 0.90], [0.02, 0.03, 0.04])}
PER_RUN_ROWS = 8 + len(SHIFT_KINDS) * len(SEVERITIES) * 8 + len(OOD_SETS) * 9 + 3


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    for label, (accs, eces) in RUNS.items():
        for seed, (a, e) in enumerate(zip(accs, eces)):
            store.write(fake_result(label, "toy", seed, a, e,
                                    n_params=1000 if label == "map" else 2000))
            # second dataset: 2 seeds, no shift or OOD sets
            if seed < 2:
                store.write(fake_result(label, "tiny", seed, a, e, shift=False, ood=False))
    store.write(fake_result("vi", "toy", 7, 0.5, 0.5, status="failed",
                            error="Traceback ...\nRuntimeError: KL | term is NaN"))
    # quick runs with very different numbers: must never leak into the full report
    store.write(fake_result("map", "toy", 0, 0.10, 0.90, quick=True))
    return store


def _cell(summary, label, split, metric, dataset="toy"):
    row = summary[(summary.label == label) & (summary.dataset == dataset)
                  & (summary.split == split) & (summary.metric == metric)]
    assert len(row) == 1, (label, split, metric)
    return row.iloc[0]


def _table_after(md: str, *headings: str) -> list[list[str]]:
    """Cells of the first Markdown table after ``headings`` (each found after the one
    before)."""
    at = 0
    for heading in headings:
        at = md.index(heading, at)
    lines = md[at:].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return [rows[0]] + rows[2:]  # drop the alignment rule


def test_summary_csv_holds_hand_computed_means_and_stds(store, tmp_path):
    write_report(store, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    acc = _cell(summary, "map", "test", "accuracy")
    assert (acc["mean"], acc["std"], acc["n"]) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    ece = _cell(summary, "vi", "test", "ece")
    assert (ece["mean"], ece["std"]) == (pytest.approx(0.03), pytest.approx(0.01))
    # per run shift_mean accuracy = acc - 0.15 (severities 1, 2) - 0.01 (blur half the time)
    sm = _cell(summary, "map", "shift_mean", "accuracy")
    assert (sm["mean"], sm["std"], sm["n"]) == (pytest.approx(0.76), pytest.approx(0.02), 3)
    assert _cell(summary, "vi", "severity/2", "accuracy")["mean"] == pytest.approx(0.85 - 0.21)
    assert _cell(summary, "vi", "shift/blur", "accuracy")["mean"] == pytest.approx(0.85 - 0.17)
    assert _cell(summary, "map", "shift/noise", "ece")["mean"] == pytest.approx(0.12 + 0.015)
    assert _cell(summary, "vi", "ood_mean", "auroc_entropy")["mean"] == pytest.approx(0.8)
    assert _cell(summary, "map", "cost", "train_seconds")["mean"] == pytest.approx(11.0)
    tiny = _cell(summary, "vi", "test", "accuracy", dataset="tiny")
    assert (tiny["mean"], tiny["n"]) == (pytest.approx(0.825), 2)
    assert tiny["std"] == pytest.approx(math.sqrt(2 * 0.025**2))
    assert not summary["quick"].any()
    assert not ((summary.dataset == "tiny") & (summary.split == "shift_mean")).any()


def test_std_is_nan_for_a_single_seed(tmp_path):
    store = ResultStore(tmp_path / "one.sqlite")
    store.write(fake_result("map", "toy", 0, 0.9, 0.1))
    agg = aggregate_store(store)
    acc = _cell(agg, "map", "test", "accuracy")
    assert (acc["mean"], acc["n"]) == (pytest.approx(0.9), 1) and math.isnan(acc["std"])
    write_report(store, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["std"].isna().all()  # an empty cell in the CSV, not 0


def test_results_csv_has_one_row_per_run_split_metric(store, tmp_path):
    write_report(store, tmp_path / "out")
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results.columns) == ["label", "method", "dataset", "seed", "split", "shift_kind",
                                     "severity", "metric", "value", "quick", "key",
                                     "config_hash", "git_commit", "finished_at"]
    assert len(results) == 6 * PER_RUN_ROWS + 4 * (8 + 3)  # toy: 6 runs; tiny: 4 runs
    row = results[(results.key == "vi-toy-1-f") & (results.split == "shift/blur/2")
                  & (results.metric == "accuracy")]
    assert (row["shift_kind"].item(), row["severity"].item()) == ("blur", 2)
    assert row["value"].item() == pytest.approx(0.85 - 0.22)
    assert results[results.split == "test"]["shift_kind"].isna().all()


def test_leaderboard_bolds_the_best_cell_direction_aware(store, tmp_path):
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    def table(*headings):
        cells = _table_after(md, *headings)
        return cells[0], {r[0]: r for r in cells[1:]}

    header, rows = table("## toy", "**Quality**")
    acc = header.index("accuracy ↑")
    assert rows["map"][acc] == "**0.920 ± 0.020**"  # higher accuracy wins
    # vi - map per seed: -0.10, -0.07, -0.04: t = 4.04 on 2 df, p = 0.056: not worse
    assert rows["vi"][acc] == "*0.850 ± 0.050*"
    assert header[-1] == "n" and rows["map"][-1] == "3"
    header, rows = table("## toy", "**Calibration**")
    ece = header.index("ECE ↓")
    assert rows["vi"][ece] == "**0.030 ± 0.010**"  # lower ECE wins
    assert rows["map"][ece] == "0.120 ± 0.020"  # 0.08, 0.09, 0.10 worse: p = 0.004
    header, rows = table("## toy", "**Cost**")
    params = header.index("parameters ↓")
    assert rows["map"][params] == "**1,000**" and rows["vi"][params] == "2,000"
    ratio = header.index("train × map")  # train seconds 10 + seed for every run
    assert rows["map"][ratio] == "1 ± 0.0909" and rows["vi"][ratio] == "1 ± 0.0909"
    assert "shift accuracy ↑" in table("## toy", "**Robustness")[0]
    assert "OOD AUROC (entropy) ↑" in table("## toy", "**OOD detection")[0]
    assert "train s ↓" in table("## toy", "**Cost**")[0]
    assert "kl_true" not in md and "KL(true" not in md  # absent metrics get no column
    assert "ECE: 5 equal-width bins; adaptive ECE: 5 equal-mass bins" in md

    tiny = _table_after(md, "## tiny")
    assert tiny[1][-1] == "2"
    tiny_section = md[md.index("## tiny"):]
    assert "**Robustness" not in tiny_section.split("## ", 2)[1]  # no shifted sets there

    shift = _table_after(md, "**Accuracy**")
    assert shift[0][:3] == ["method", "severity 1 ↑", "severity 2 ↑"]
    assert {"blur ↑", "noise ↑", "mean ↑"} <= set(shift[0])
    ood = _table_after(md, "**Scored by predictive entropy**")
    assert {"far AUROC ↑", "near AUPR ↑", "far FPR95 ↓"} <= set(ood[0])
    assert "**Scored by maximum probability**" in md


def test_failed_runs_are_listed_with_their_error(store, tmp_path):
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    failed = md[md.index("## Failed runs (1)"):]
    assert "`vi` on `toy`, seed 7" in failed
    assert "RuntimeError: KL | term is NaN" in failed


def test_reliability_pngs_are_valid(store, tmp_path):
    paths = write_report(store, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["cd_diagram.png", "comparisons.csv", "cost_quality.png", "example_tests.csv",
                     "leaderboard.md", "reliability_tiny.png", "reliability_toy.png",
                     "report.html", "results.csv", "summary.csv"]
    for ds in ("toy", "tiny"):
        png = tmp_path / "out" / f"reliability_{ds}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_quick_and_full_runs_are_never_mixed(store, tmp_path):
    write_report(store, tmp_path / "full")
    full = pd.read_csv(tmp_path / "full" / "results.csv")
    assert not full["quick"].any()
    write_report(store, tmp_path / "quick", quick=True)
    quick = pd.read_csv(tmp_path / "quick" / "results.csv")
    assert quick["quick"].all() and len(quick) == PER_RUN_ROWS
    assert "quick runs" in (tmp_path / "quick" / "leaderboard.md").read_text()
    acc = _cell(pd.read_csv(tmp_path / "quick" / "summary.csv"), "map", "test", "accuracy")
    assert acc["mean"] == pytest.approx(0.10)


def test_only_quick_runs_default_to_quick(tmp_path):
    store = ResultStore(tmp_path / "q.sqlite")
    store.write(fake_result("map", "toy", 0, 0.9, 0.1, quick=True))
    assert aggregate_store(store)["quick"].all()


def test_empty_or_all_failed_store_raises_store_error(tmp_path):
    store = ResultStore(tmp_path / "empty.sqlite")
    with pytest.raises(StoreError, match="no complete full runs .*run `bayesbench run` first"):
        write_report(store, tmp_path / "out")
    store.write(fake_result("vi", "toy", 0, 0.9, 0.1, status="failed",
                            error="Traceback\nValueError: bad prior"))
    with pytest.raises(StoreError, match="1 failed .*ValueError: bad prior"):
        write_report(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(StoreError, match="no results at"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "out")


def test_markdown_table_escapes_pipes():
    table = markdown_table(["method", "x"], [["a|b", "1"]])
    assert table.splitlines() == ["| method | x |", "| :--- | ---: |", "| a\\|b | 1 |"]


def test_varying_seed_counts_are_shown_per_cell_and_ties_are_not_bold(store, tmp_path):
    extra = fake_result("vi", "toy", 3, 0.85, 0.03, shift=False)  # vi: 4 seeds, 3 with shift
    store.write(extra)
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    table = _table_after(md, "## toy", "**Quality**")
    header, rows = table[0], {r[0]: r for r in table[1:]}
    assert header[-1] == "n" and rows["vi"][-1] == "4"
    assert rows["vi"][header.index("accuracy ↑")] == "*0.850 ± 0.041*"
    table = _table_after(md, "## toy", "**Robustness")
    assert {r[0]: r for r in table[1:]}["vi"][-1] == "3"  # seed 3 has no shifted sets
    table = _table_after(md, "## toy", "**OOD detection")
    header, rows = table[0], {r[0]: r for r in table[1:]}
    assert rows["vi"][-1] == "4"
    # every run has the same OOD AUROC: a tie marks nothing
    assert rows["map"][header.index("OOD AUROC (entropy) ↑")] == "0.800 ± 0.000"


def test_pooled_reliability_sums_bins_over_seeds():
    from bayesbench.report.figures import pool_reliability

    runs = [fake_result("map", "toy", s, 0.9, 0.1) for s in range(3)]
    runs[2].reliability = {"n_bins": 3, "counts": [1, 1, 1], "confidence_sum": [0, 0, 0],
                           "correct_sum": [0, 0, 0]}  # other binning: skipped, not mixed
    pooled = pool_reliability(runs)
    assert (pooled.n_runs, pooled.skipped_runs) == (2, 1)
    assert pooled.counts.tolist() == [0, 2, 4, 6, 8]
    # |0 - 0.3| + |1 - 1| + |2 - 2.1| + |4 - 3.6| per run = 0.8 over 10 examples
    assert pooled.ece == pytest.approx(0.08)
    assert math.isnan(pooled.accuracy[0]) and pooled.accuracy[4] == 1.0


def test_summary_splits_without_shifted_sets():
    """A dataset with no shifted sets (only test and OOD) aggregates without error."""
    import pandas as pd

    from bayesbench.report.aggregate import add_summary_splits

    tidy = pd.DataFrame({"key": ["a", "a"], "label": ["m", "m"], "method": ["m", "m"],
                         "dataset": ["d", "d"], "seed": [0, 0], "quick": [False, False],
                         "split": ["test", "ood/x"], "metric": ["accuracy", "auroc_entropy"],
                         "value": [0.5, 0.6]})
    out = add_summary_splits(tidy)
    assert sorted(out["split"]) == ["ood/x", "ood_mean", "test"]
    assert out.loc[out["split"] == "ood_mean", "value"].item() == 0.6


def test_a_rerun_under_changed_settings_supersedes_the_old_run(tmp_path):
    """Two stored runs of one (label, dataset, seed) with different config hashes: the report
    and the gate count only the most recently finished one."""
    from bayesbench.report import aggregate_store

    store = ResultStore(tmp_path / "r.sqlite")
    old = fake_result("map", "toy", 0, 0.5, 0.1)
    new = fake_result("map", "toy", 0, 0.9, 0.1)
    new.key, new.finished_at = "map-toy-0-newconfig", "2025-01-02T00:00:00"
    store.write(old)
    store.write(new)
    agg = aggregate_store(store)
    row = agg[(agg["split"] == "test") & (agg["metric"] == "accuracy")]
    assert row["n"].tolist() == [1] and row["mean"].tolist() == [0.9]


# ------------------------------------------------------------------- report file names

def test_safe_names_keep_existing_names_and_never_collide():
    from bayesbench.report.leaderboard import safe_file_name, unique_file_names

    for name in ("digits", "mnist1d", "breast_cancer", "markov", "mfvi", "dirichlet_attention",
                 "a.b-c_1"):
        assert safe_file_name(name) == name  # today's names stay (the committed reports)
    names = ["a b", "a_b", "a/b", "a:b", "A_B", "é", "", ".", "x" * 300, "x" * 301]
    stems = [safe_file_name(n) for n in names]
    assert len(set(stems)) == len(names)
    # within one report, names that differ only in case get a hash too (macOS, Windows)
    in_report = unique_file_names([(n,) for n in names]).values()
    assert len({s.lower() for s in in_report}) == len(names)
    for stem in [*stems, *in_report]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", stem), stem
    assert stems[0] == "a_b-" + hashlib.sha256(b"a b").hexdigest()[:8]
    # joined parts: ("a_b", "c") and ("a", "b_c") would both be "a_b_c"; case-only twins too
    pairs = unique_file_names([("a_b", "c"), ("a", "b_c"), ("toy", "mfvi"), ("Toy", "mfvi")])
    assert len(set(pairs.values())) == 4 and len({v.lower() for v in pairs.values()}) == 4
    assert pairs[("toy", "mfvi")].startswith("toy_mfvi-")
    assert unique_file_names([("toy", "mfvi"), ("toy", "sghmc")]) == {
        ("toy", "mfvi"): "toy_mfvi", ("toy", "sghmc"): "toy_sghmc"}


def test_committed_report_names_are_unchanged():
    from conftest import REPO

    from bayesbench.report.leaderboard import unique_file_names

    committed = {p.name for p in (REPO / "reports").glob("*.png")}
    datasets = sorted(p[len("reliability_"):-4] for p in committed
                      if p.startswith("reliability_"))
    assert datasets and {f"reliability_{s}.png" for s in
                         unique_file_names([(d,) for d in datasets]).values()} == {
        f"reliability_{d}.png" for d in datasets}
    sweeps = {p for p in committed if p.startswith("sweep_")}
    pairs = [(d, p[len(f"sweep_{d}_"):-4]) for p in sweeps for d in datasets
             if p.startswith(f"sweep_{d}_")]
    assert len(pairs) == len(sweeps)
    assert {f"sweep_{s}.png" for s in unique_file_names(pairs).values()} == sweeps


def test_labels_that_slug_alike_or_are_long_get_their_own_files(tmp_path):
    """'a b' and 'a_b' once both wrote reliability_a_b.png; a 300-character name broke the
    report (file name too long). Sweep groups likewise."""
    store = ResultStore(tmp_path / "s.sqlite")
    long_name = "d" * 300
    for dataset in ("a b", "a_b", long_name):
        store.write(fake_result("map", dataset, 0, 0.9, 0.1, shift=False, ood=False))
    for group in ("g h", "g_h"):
        for scale in (0.1, 1.0):
            run = fake_result(f"{group}@s={scale}", "a_b", 0, 0.8, 0.1, shift=False, ood=False)
            run.spec = {**run.spec, "group": group, "swept": {"s": scale}}
            store.write(run)
    paths = write_report(store, tmp_path / "out")
    names = [p.name for p in paths]
    assert len(names) == len(set(names))
    pngs = sorted(n for n in names if n.endswith(".png"))
    assert len([n for n in pngs if n.startswith("reliability_")]) == 3
    assert len([n for n in pngs if n.startswith("sweep_")]) == 2
    assert "reliability_a_b.png" in pngs and "sweep_a_b_g_h.png" in pngs  # the safe ones keep
    assert all(len(n) < 120 for n in names)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    for png in pngs:
        assert f"]({png})" in md and (tmp_path / "out" / png).stat().st_size > 0


def test_output_paths_are_checked_before_anything_is_written(store, tmp_path):
    from bayesbench.errors import OutputPathError
    from bayesbench.report.leaderboard import check_output_file, check_output_folder

    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    with pytest.raises(OutputPathError, match=r"^report folder .*taken: is an existing file"):
        write_report(store, a_file)
    with pytest.raises(OutputPathError, match=r"taken' is a file, so no folder can be made"):
        write_report(store, a_file / "sub")
    with pytest.raises(OutputPathError, match=r"^--write-baseline .*: is a folder; give a "
                                              r"file path"):
        check_output_file(tmp_path, "--write-baseline")
    with pytest.raises(OutputPathError, match="taken' is a file"):
        check_output_file(a_file / "baseline.csv", "--write-baseline")
    assert a_file.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [
        tmp_path / "results.sqlite", a_file]
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
