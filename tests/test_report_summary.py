"""The report's summary across datasets, its one selection of runs, summary.csv's tidy layout
and report.html, on hand-made store rows (no training)."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from fake_results import fake_result

from bayesbench.report import write_report
from bayesbench.report.selection import select_store_runs
from bayesbench.report.summary import cross_dataset_summary, per_seed_values
from bayesbench.store import ResultStore

DATASETS = ("d1", "d2", "d3")
MAP_ACC, MAP_ECE = (0.90, 0.91, 0.92), (0.10, 0.11, 0.12)
# per seed, relative to map: `good` is better on every seed, `bad` worse, `same` even on average
OFFSETS = {"map": ((0, 0, 0), (0, 0, 0)),
           "good": ((0.02, 0.021, 0.022), (-0.05, -0.051, -0.052)),
           "bad": ((-0.10, -0.11, -0.12), (0.05, 0.06, 0.07)),
           "same": ((0.01, -0.01, 0.0), (0.0, 0.0, 0.0))}
TRAIN = {"map": 10.0, "good": 40.0, "bad": 5.0, "same": 10.0}


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "grid.sqlite")
    for dataset in DATASETS:
        for label, (da, de) in OFFSETS.items():
            for seed in range(3):
                store.write(fake_result(label, dataset, seed, MAP_ACC[seed] + da[seed],
                                        MAP_ECE[seed] + de[seed], train_seconds=TRAIN[label],
                                        method_params={"scale": 1.0} if label == "good"
                                        else {}))
    return store


def _summary(store):
    return cross_dataset_summary(per_seed_values(select_store_runs(store).tidy))


def test_mean_ranks_friedman_and_verdict(store):
    s = _summary(store)
    nll = next(r for r in s.rankings if r.metric == "nll" and r.split == "test")
    # per dataset: good 1; map and same tie (2.5 each); bad 4
    assert nll.mean_ranks.to_dict() == {"good": 1.0, "map": 2.5, "same": 2.5, "bad": 4.0}
    # Friedman with the tie correction: χ² = 8.1 / (1 − 18 / 180) = 9.0 on 3 df
    assert nll.friedman_stat == pytest.approx(9.0)
    assert nll.friedman_p == pytest.approx(0.0293, abs=1e-4)
    assert nll.cd == pytest.approx(2.569 * math.sqrt(20 / 18), abs=2e-3)
    # bad is 3 ranks behind good (> CD 2.71): distinguishable; map and same are not
    assert nll.indistinguishable() == ["map", "same"]
    assert nll.verdict().startswith("**NLL** ↓: best: `good` (mean rank 1.00 of 4 over 3 "
                                    "datasets); not distinguishable from `good`: `map`, `same`")
    ood = next(r for r in s.rankings if r.metric == "auroc_entropy")
    assert "all 4 ranked methods tie" in ood.verdict()


def test_win_tie_loss_against_map_and_cost_ratio(store):
    s = _summary(store)
    wtl = s.wtl().set_index(["label", "split", "metric"])
    assert wtl.loc[("good", "test", "nll")][["win", "tie", "loss"]].tolist() == [3, 0, 0]
    assert wtl.loc[("good", "test", "ece")][["win", "tie", "loss"]].tolist() == [3, 0, 0]
    assert wtl.loc[("bad", "test", "nll")][["win", "tie", "loss"]].tolist() == [0, 0, 3]
    assert wtl.loc[("same", "test", "nll")][["win", "tie", "loss"]].tolist() == [0, 3, 0]
    assert wtl.loc[("bad", "shift_mean", "accuracy")][["win", "tie", "loss"]].tolist() == \
        [0, 0, 3]
    c = s.comparisons.set_index(["label", "dataset", "split", "metric"])
    row = c.loc[("good", "d1", "test", "nll")]
    # nll = 1 − accuracy: good − map = −0.020, −0.021, −0.022
    assert (row["n"], row["diff"]) == (3, pytest.approx(-0.021))
    from scipy import stats
    p = stats.ttest_rel([1 - a - d for a, d in zip(MAP_ACC, OFFSETS["good"][0])],
                        [1 - a for a in MAP_ACC]).pvalue
    assert row["p"] == pytest.approx(p, rel=1e-6)
    assert row["p_holm"] == pytest.approx(min(1.0, 3 * p), rel=1e-6)  # 3 equal p-values
    assert s.pooled_cost_ratio().to_dict() == pytest.approx(
        {"bad": 0.5, "good": 4.0, "map": 1.0, "same": 1.0})


def test_summary_comes_first_in_the_leaderboard(store, tmp_path):
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert md.index("## Summary across datasets") < md.index("## Per dataset") < \
        md.index("## d1")
    header = md.splitlines()[2]
    assert header.startswith("36 complete full runs: 4 method labels × 3 datasets, seeds "
                             "0, 1, 2; git commit `abc1234`; 0 failed.")
    assert "cfg123" not in md  # config hashes live in results.csv
    section = md[md.index("## Summary"):md.index("## Per dataset")]
    table = [line for line in section.splitlines() if line.startswith("|")]
    rows = {r.split(" | ")[0].strip("| "): r for r in table[2:]}
    assert "**1.00** · 3/0/0" in rows["good"] and "4.00× |" in rows["good"]
    assert "· ref" in rows["map"] and "0.50× |" in rows["bad"]
    assert "paired t-test" in md and "Holm" in md and "Wilcoxon" in md
    assert "- **NLL** ↓: best: `good`" in md
    assert "![Critical-difference diagrams](cd_diagram.png)" in md
    for png in ("cd_diagram.png", "cost_quality.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comparisons = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert {"label", "dataset", "split", "metric", "n", "diff", "p", "p_holm",
            "outcome"} <= set(comparisons.columns)
    assert set(comparisons["label"]) == {"good", "bad", "same"}


def test_a_superseded_run_is_counted_once_everywhere(tmp_path, monkeypatch):
    """map seed 0 on toy was rerun under changed settings (another key, finished later): the
    old run appears in no count, table, CSV, figure or sweep."""
    import bayesbench.report.leaderboard as leaderboard

    store = ResultStore(tmp_path / "s.sqlite")
    old = fake_result("map", "toy", 0, 0.10, 0.90)
    old.key = "map-toy-0-old"
    store.write(old)
    for seed in range(2):
        store.write(fake_result("map", "toy", seed, 0.9, 0.1,
                                finished_at="2025-01-02T00:00:00"))
        store.write(fake_result("vi", "toy", seed, 0.8, 0.05))
    for key, finished in (("sw-old", "2025-01-01T00:00:00"), ("sw-new", "2025-01-03T00:00:00")):
        run = fake_result("mfvi@s=1", "toy", 0, 0.5 if key == "sw-old" else 0.7, 0.1,
                          finished_at=finished)
        run.key = key
        run.spec = {**run.spec, "group": "mfvi", "swept": {"s": 1}}
        store.write(run)

    seen: dict[str, list[str]] = {}
    real_rel, real_sweeps = leaderboard.reliability_figure, leaderboard.sweep_figures

    def reliability(name, dataset, by_label):
        seen["reliability"] = sorted(r.key for runs in by_label.values() for r in runs)
        return real_rel(name, dataset, by_label)

    def sweeps(runs):
        seen["sweeps"] = sorted(r.key for r in runs)
        return real_sweeps(runs)

    monkeypatch.setattr(leaderboard, "reliability_figure", reliability)
    monkeypatch.setattr(leaderboard, "sweep_figures", sweeps)
    write_report(store, tmp_path / "out")

    kept = sorted(["map-toy-0-f", "map-toy-1-f", "vi-toy-0-f", "vi-toy-1-f", "sw-new"])
    assert seen["reliability"] == kept and seen["sweeps"] == kept
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert md.splitlines()[2].startswith(
        "5 complete full runs (2 superseded runs left out: only the latest run of each "
        "method label, dataset and seed counts): 3 method labels × 1 dataset, seeds 0, 1")
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(results["key"].unique()) == kept
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    acc = summary[(summary.label == "map") & (summary.split == "test")
                  & (summary.metric == "accuracy")].iloc[0]
    assert (acc["n"], acc["mean"]) == (2, pytest.approx(0.9))
    sweep = summary[(summary.label == "mfvi@s=1") & (summary.metric == "accuracy")
                    & (summary.split == "test")].iloc[0]
    assert sweep["mean"] == pytest.approx(0.7)
    assert "Lowest test NLL: `mfvi@s=1` (0.300" in md
    comparisons = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert set(comparisons["n"]) <= {1, 2}


def test_summary_csv_is_tidy(store, tmp_path):
    store.write(fake_result("one", "d1", 0, 0.9, 0.1))  # one seed: std is empty
    write_report(store, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary.columns) == ["label", "method", "dataset", "quick", "split",
                                     "split_kind", "shift_kind", "severity", "ood_set",
                                     "metric", "mean", "std", "n", "param.scale"]
    one = summary[summary.label == "one"]
    assert one["std"].isna().all() and (one["n"] == 1).all()
    row = summary[(summary.label == "map") & (summary.dataset == "d1")
                  & (summary.split == "shift/blur/2") & (summary.metric == "accuracy")].iloc[0]
    assert (row["split_kind"], row["shift_kind"], row["severity"]) == ("shift", "blur", 2)
    sev = summary[summary.split == "severity/1"].iloc[0]
    assert (sev["split_kind"], sev["severity"]) == ("severity", 1)
    assert pd.isna(sev["shift_kind"])
    ood = summary[summary.split == "ood/far"].iloc[0]
    assert (ood["split_kind"], ood["ood_set"]) == ("ood", "far")
    assert set(summary.loc[summary.label == "good", "param.scale"]) == {1.0}
    assert summary.loc[summary.label == "map", "param.scale"].isna().all()
    # a sweep can be analysed without parsing labels: mean NLL by parameter value
    assert summary.dropna(subset=["param.scale"]).groupby("param.scale").size().size == 1


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        for name in ("src", "href"):
            if attrs.get(name):
                self.urls.append(attrs[name])


def test_report_html_is_self_contained(store, tmp_path):
    write_report(store, tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    parser = _Links()
    parser.feed(text)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(parser.images) == len(linked) >= 5  # cd, cost, 3 reliability diagrams
    for src in parser.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [u for u in parser.urls if not u.startswith(("data:", "#"))]
    assert not re.search(r"https?://", text)
    assert "<table>" in text and "Summary across datasets" in text
    assert "<details>" in text  # the long shift and OOD tables are collapsed


def test_class_names_and_shift_file_names_are_shown(tmp_path):
    """A dataset's class names (as its runs record them) and, for a files dataset, which of
    the user's files each severity is."""
    store = ResultStore(tmp_path / "s.sqlite")
    for seed in range(2):
        run = fake_result("map", "clinic", seed, 0.9, 0.1)
        run.spec = {**run.spec, "task": {"class_names": ["died", "survived"]},
                    "dataset_params": {"shifted": {"site": ["data/site_b.csv",
                                                            "data/site_c.csv"]}}}
        store.write(run)
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    section = md[md.index("## clinic"):]
    assert "Classes (2): died, survived." in section
    assert "Shift files: site: severity 1 = `site_b.csv`, severity 2 = `site_c.csv`." in section


def test_cd_cliques_join_methods_within_the_critical_difference():
    from bayesbench.report.figures import cd_cliques

    # 1.0–1.5 (< 1.6); 1.5–3.0 (1.5); 2.8–3.0 lies inside the latter; 3.0–4.5 (1.5)
    assert cd_cliques([1.0, 1.5, 2.8, 3.0, 4.5], 1.6) == [(0, 1), (1, 3), (3, 4)]
    assert cd_cliques([1.0, 3.0, 5.0], 1.0) == []  # every pair differs significantly
    assert cd_cliques([1.0, 2.0, 3.0], 10.0) == [(0, 2)]


def test_cli_report_then_check_on_the_same_runs(store, tmp_path, run_cli):
    rep = run_cli("report", "--store", str(store.path), "--out", "rep", "--write-baseline",
                  "rep/baseline.csv")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    for name in ("leaderboard.md", "report.html", "summary.csv", "comparisons.csv",
                 "cd_diagram.png", "cost_quality.png", "baseline.csv"):
        assert f"rep/{name}" in rep.stdout and (tmp_path / "rep" / name).stat().st_size > 0
    check = run_cli("check", "--baseline", "rep/baseline.csv", "--store", str(store.path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 regressed, 0 missing, 0 failed, 0 beyond tolerance but within seed noise" in \
        " ".join(check.stdout.split())


def test_a_model_at_chance_is_never_best_nor_ranked(tmp_path):
    """mfvi at 0.127 accuracy on 8 classes (chance 0.125) with the lowest ECE: flagged, not
    bold, not ranked; the note says why."""
    store = ResultStore(tmp_path / "s.sqlite")
    for dataset in ("d1", "d2"):
        for label, acc, ece in (("map", 0.90, 0.05), ("swag", 0.88, 0.04),
                                ("mfvi", 0.127, 0.001)):
            for seed in range(3):
                run = fake_result(label, dataset, seed, acc + 0.001 * seed, ece + 0.001 * seed)
                run.spec = {**run.spec, "task": {"num_classes": 8}}
                store.write(run)
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    section = md[md.index("## d1"):md.index("## d2")]
    calib = section[section.index("**Calibration**"):section.index("**Robustness")]
    rows = {line.split(" | ")[0].strip("| "): line for line in calib.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert "mfvi †" in rows and "**" not in rows["mfvi †"]
    assert "**0.041 ± 0.001**" in rows["swag"]  # the best ECE among non-degenerate methods
    assert "† not above chance on d1" in section
    summary = md[md.index("## Summary"):md.index("## Per dataset")]
    assert "`mfvi` on d1 (accuracy 0.128)" in summary
    mfvi_row = [line for line in summary.splitlines() if line.startswith("| mfvi |")][0]
    assert "–" in mfvi_row and "**" not in mfvi_row  # no rank on any metric
    ece = [line for line in summary.splitlines() if line.startswith("- **ECE**")][0]
    assert "best: `swag`" in ece and "mfvi" not in ece


def test_a_dataset_where_most_methods_are_at_chance_is_left_out_not_the_methods(tmp_path):
    """On d3 (a quick budget, say) three of four methods are at chance: d3 leaves the
    rankings, every method stays ranked over d1 and d2, and the note says so."""
    store = ResultStore(tmp_path / "s.sqlite")
    for dataset in ("d1", "d2", "d3"):
        for i, label in enumerate(("map", "swag", "mfvi", "sngp")):
            acc = 0.2 if dataset == "d3" and label != "map" else 0.9 - 0.01 * i
            for seed in range(3):
                run = fake_result(label, dataset, seed, acc + 0.001 * seed, 0.05 + 0.01 * i)
                run.spec = {**run.spec, "task": {"num_classes": 4}}
                store.write(run)
    at_chance = {("d3", label): 0.2 for label in ("swag", "mfvi", "sngp")}
    summary = cross_dataset_summary(per_seed_values(select_store_runs(store).tidy),
                                    degenerate=at_chance)
    ece = next(r for r in summary.rankings if r.metric == "ece")
    assert ece.datasets == ["d1", "d2"] and ece.left_out == ["d3"] and ece.unranked == []
    assert ece.mean_ranks.to_dict() == {"map": 1.0, "swag": 2.0, "mfvi": 3.0, "sngp": 4.0}
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "- every metric: datasets d3 (ranked: 4 methods on 2 datasets)." in md


def test_replacing_a_report_of_other_runs_says_so(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    for seed in range(2):
        store.write(fake_result("map", "toy", seed, 0.9, 0.1))
    store.write(fake_result("map", "toy", 0, 0.5, 0.1, quick=True))
    notes: list[str] = []
    write_report(store, tmp_path / "out", notes=notes)
    write_report(store, tmp_path / "out", notes=notes)  # the same runs again: nothing to say
    assert notes == []
    write_report(store, tmp_path / "out", quick=True, notes=notes)
    assert notes == [f"replacing {tmp_path / 'out' / 'leaderboard.md'} (2 complete full runs) "
                     "with a report of 1 complete quick runs"]


def test_one_seed_gives_ranks_but_no_paired_tests(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    for dataset in ("d1", "d2"):
        for label, acc in (("map", 0.9), ("vi", 0.8), ("swag", 0.85)):
            store.write(fake_result(label, dataset, 0, acc, 0.1))
    write_report(store, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    summary = md[md.index("## Summary"):md.index("## Per dataset")]
    row = [line for line in summary.splitlines() if line.startswith("| vi |")][0]
    assert "3.00 · n/a" in row  # worst NLL on both datasets, untested against map
    assert "*" not in md[md.index("## d1"):].split("**Calibration**")[0].replace("**", "")


def test_runs_under_another_metric_specification_are_never_mixed(tmp_path):
    """map seed 0 was rescored with 10 ECE bins (its latest run): the report keeps the
    15-bin specification most runs share, takes seed 0's 15-bin run, and says one run under
    another specification was left out."""
    import dataclasses

    from bayesbench.report.selection import select_store_runs
    from bayesbench.results import metric_spec

    store = ResultStore(tmp_path / "s.sqlite")
    for seed in (0, 1, 2):
        r = fake_result("map", "toy", seed, 0.9, 0.05)
        r.spec["metric_spec"] = metric_spec(15)
        store.write(r)
    other = fake_result("map", "toy", 0, 0.9, 0.5, finished_at="2025-02-01T00:00:00")
    other.spec["metric_spec"] = metric_spec(10)
    store.write(dataclasses.replace(other, key="map-toy-0-rescored"))
    sel = select_store_runs(store)
    assert sorted(sel.runs["key"]) == ["map-toy-0-f", "map-toy-1-f", "map-toy-2-f"]
    assert sel.metric_spec == metric_spec(15) and sel.other_spec == 1 and sel.superseded == 0
    test_ece = sel.tidy[(sel.tidy.split == "test") & (sel.tidy.metric == "ece")]["value"]
    assert list(test_ece) == [0.05] * 3  # never the 10-bin value
    header = sel.header_line()
    assert "Metrics: ECE and MCE over 15 equal-width bins" in header
    assert "1 run computed under another metric specification left out" in header


def test_the_header_names_the_cpu_and_warns_when_runs_mix_cpu_types(tmp_path):
    """The same settings give other numbers on another CPU type, so the header says which
    CPU the runs were made on, and warns when they come from more than one."""
    from bayesbench.runner import cpu_model, package_versions

    assert package_versions()["cpu"] == cpu_model() and cpu_model()
    store = ResultStore(tmp_path / "s.sqlite")
    for seed in range(2):
        run = fake_result("map", "d1", seed, 0.9, 0.05)
        run.versions = {"cpu": "Intel(R) Xeon(R)"}
        store.write(run)
    sel = select_store_runs(store)
    assert sel.cpus == {"Intel(R) Xeon(R)": 2}
    assert "CPU: Intel(R) Xeon(R)." in sel.header_line()
    other = fake_result("map", "d2", 0, 0.9, 0.05)
    other.versions = {"cpu": "AMD EPYC 7B13"}
    store.write(other)
    old = fake_result("map", "d3", 0, 0.9, 0.05)  # stored before runs recorded their CPU
    store.write(old)
    line = select_store_runs(store).header_line()
    assert "AMD EPYC 7B13 (1 run), Intel(R) Xeon(R) (2 runs)" in line
    assert "runs from more than one CPU type" in line
