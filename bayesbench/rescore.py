"""``bayesbench rescore``: every metric again from the stored predictions, without retraining.

In place (the default): each complete run with stored predictions gets its test, shifted and
OOD metrics recomputed by this bayesbench's metric code (a fixed or a new metric) and its
metric specification refreshed; cost and fit diagnostics are kept. Nothing else changes, so
with unchanged metric code every value comes back bit for bit (a check on the store itself).

With another binning (``--ece-bins N``): each run is scored again with N calibration bins and
stored as the run it would have been with ``evaluation.ece_bins: N`` in the config (its own
key; the original is kept), so a ``bayesbench run`` with that config finds it complete and a
report of it needs no retraining.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bayesbench.config import RunSpec
from bayesbench.metrics.calibration import reliability_statistics
from bayesbench.predictions import decode, rescore
from bayesbench.results import TEST_SPLIT, MetricValue, RunResult, metric_spec
from bayesbench.store import ResultStore

_SPEC_FIELDS = {f.name for f in dataclasses.fields(RunSpec)}


@dataclass
class RescoreOutcome:
    """What a rescore did: ``rescored`` runs (in place) of which ``changed`` got at least one
    different value (``values_changed`` in all), ``derived`` runs written under another
    binning, ``already`` of those stored already, and the runs it could not rescore with
    why (``without_predictions``: stored before predictions were kept, or with
    ``keep_predictions: false``)."""

    rescored: int = 0
    changed: int = 0
    values_changed: int = 0
    derived: int = 0
    already: int = 0
    without_predictions: int = 0
    problems: list[str] = field(default_factory=list)


def _spec_of(run: RunResult) -> RunSpec | None:
    """The RunSpec a stored run was made from (None when its stored spec no longer gives
    back its key: stored by an older layout)."""
    try:
        spec = RunSpec(**{k: v for k, v in (run.spec or {}).items() if k in _SPEC_FIELDS})
    except TypeError:
        return None
    return spec if spec.key == run.key else None


def _same(a: float, b: float | None) -> bool:
    return b is not None and (a == b or (math.isnan(a) and math.isnan(b)))


def rescore_store(store: ResultStore, *, ece_bins: int | None = None,
                  quick: bool | None = None,
                  on_run: Callable[[RunResult], None] | None = None) -> RescoreOutcome:
    """Rescore the complete runs of ``store`` (only quick or only full ones with ``quick``);
    see the module docs. ``on_run`` is called with each run as it is done."""
    outcome = RescoreOutcome()
    runs = [r for r in store.results(status="complete") if quick is None or r.quick == quick]
    complete = store.completed_keys()
    for run in runs:
        blob = store.predictions(run.key)
        if blob is None:
            outcome.without_predictions += 1
            continue
        predictions = decode(blob)
        own_bins = int((run.spec.get("evaluation") or {}).get("ece_bins", 15))
        bins = own_bins if ece_bins is None else ece_bins
        metrics = rescore(predictions, bins)
        test = predictions.get(TEST_SPLIT)
        reliability = None if test is None else reliability_statistics(test.probs, test.labels,
                                                                       n_bins=bins)
        if bins == own_bins:
            before = {(m.split, m.metric): m.value for m in run.metrics}
            different = sum(not _same(m.value, before.get((m.split, m.metric)))
                            for m in metrics)
            spec = {**run.spec, "metric_spec": metric_spec(bins)}
            store.replace_metrics(run.key, metrics, spec, reliability)
            outcome.rescored += 1
            outcome.changed += bool(different)
            outcome.values_changed += different
        else:
            derived = _derived_run(run, bins, metrics, reliability, blob)
            if derived is None:
                outcome.problems.append(f"{run.key} ({run.label} on {run.dataset}, seed "
                                        f"{run.seed}): its stored spec does not give back its "
                                        "key (an older layout); not rescored")
                continue
            if derived.key in complete:
                outcome.already += 1
                continue
            store.write(derived)
            outcome.derived += 1
        if on_run is not None:
            on_run(run)
    return outcome


def _derived_run(run: RunResult, bins: int, metrics: list[MetricValue],
                 reliability: dict[str, Any] | None, blob: bytes) -> RunResult | None:
    spec = _spec_of(run)
    if spec is None:
        return None
    spec = dataclasses.replace(spec, evaluation={**spec.evaluation, "ece_bins": bins})
    scored = {m.split for m in metrics}
    extra = {k: v for k, v in run.spec.items() if k not in _SPEC_FIELDS}
    return dataclasses.replace(
        run, key=spec.key, config_hash=spec.config_hash,
        spec={**spec.to_dict(), **extra, "metric_spec": metric_spec(bins),
              "rescored_from": run.key},
        metrics=metrics + [m for m in run.metrics if m.split not in scored],
        reliability=reliability, predictions=blob,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
