"""Hand-made RunResults (no training) for store, report and gate tests."""

from __future__ import annotations

from bayesbench.results import MetricValue, RunResult, ood_split, shift_split

# --- fake runs (no training): values chosen so that seed means are easy to compute by hand ---
SHIFT_KINDS = ("noise", "blur")
SEVERITIES = (1, 2)
OOD_SETS = {"far": 0.9, "near": 0.7}  # auroc_* of every run
QUALITY = ("accuracy", "nll", "brier", "ece", "adaptive_ece", "mce", "aurc", "mean_entropy")
OOD_METRICS = [f"{k}_{s}" for s in ("max_prob", "entropy", "mutual_info")
               for k in ("auroc", "aupr", "fpr95")]


def fake_result(label, dataset, seed, acc, ece, *, quick=False, status="complete", error=None,
                shift=True, ood=True, n_params=1000, train_seconds=None, method_params=None,
                finished_at="2025-01-01T00:01:00"):
    """A RunResult with quality metrics derived from (acc, ece): on shift/<kind>/<s>,
    accuracy = acc - 0.1 s - (0.02 for blur) and ece = ece + 0.01 s. Train seconds default to
    10 + seed; ``method_params`` go to ``spec["method_params"]``."""
    def quality(split, a, e):
        vals = dict(accuracy=a, nll=1 - a, brier=(1 - a) / 2, ece=e, adaptive_ece=e + 0.001,
                    mce=3 * e, aurc=(1 - a) / 4, mean_entropy=0.5)
        return [MetricValue(split, m, vals[m]) for m in QUALITY]

    metrics = quality("test", acc, ece) if status == "complete" else []
    if status == "complete" and shift:
        for kind in SHIFT_KINDS:
            for s in SEVERITIES:
                a = acc - 0.1 * s - (0.02 if kind == "blur" else 0.0)
                metrics += quality(shift_split(kind, s), a, ece + 0.01 * s)
    if status == "complete" and ood:
        for name, auroc in OOD_SETS.items():
            metrics += [MetricValue(ood_split(name), m,
                                    auroc if m.startswith("auroc") else 0.3 if "fpr" in m else 0.6)
                        for m in OOD_METRICS]
    if status == "complete":
        train = 10.0 + seed if train_seconds is None else float(train_seconds)
        metrics += [MetricValue("cost", "train_seconds", train),
                    MetricValue("cost", "predict_seconds_per_1000", 0.5),
                    MetricValue("cost", "num_parameters", float(n_params))]
    return RunResult(
        key=f"{label}-{dataset}-{seed}-{'q' if quick else 'f'}", label=label,
        method=label.split("_")[0], dataset=dataset, seed=seed, config_hash="cfg123",
        quick=quick, status=status, error=error, metrics=metrics,
        reliability={"n_bins": 5, "counts": [0, 1, 2, 3, 4],
                     "confidence_sum": [0.0, 0.3, 1.0, 2.1, 3.6],
                     "correct_sum": [0, 0, 1, 2, 4]} if status == "complete" else None,
        spec={"method": {"name": label}, "evaluation": {"ece_bins": 5},
              "method_params": dict(method_params or {})},
        versions={"torch": "2.3.0"}, git_commit="abc1234", started_at="2025-01-01T00:00:00",
        finished_at=finished_at)
