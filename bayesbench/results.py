"""What one benchmark run produces, as stored in the results store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RunStatus = Literal["complete", "failed"]

TEST_SPLIT = "test"
COST_SPLIT = "cost"
FIT_SPLIT = "fit"  # a method's own diagnostics (Method.diagnostics), not scored metrics


def shift_split(kind: str, severity: int) -> str:
    """Split name of a shifted test set, e.g. ``shift/noise/3``."""
    return f"shift/{kind}/{severity}"


def ood_split(name: str) -> str:
    """Split name of an OOD comparison, e.g. ``ood/held_out_classes``."""
    return f"ood/{name}"


def parse_split(split: str) -> tuple[str, str | None, int | None]:
    """``"shift/noise/3"`` -> ``("shift", "noise", 3)``; ``"ood/x"`` -> ``("ood", "x", None)``;
    ``"test"`` -> ``("test", None, None)``."""
    parts = split.split("/")
    if parts[0] == "shift" and len(parts) == 3:
        return "shift", parts[1], int(parts[2])
    if parts[0] == "ood" and len(parts) == 2:
        return "ood", parts[1], None
    return split, None, None


METRIC_SPEC_VERSION = 1
"""Raise when a metric's definition changes (binning, confidence, a formula): results computed
under different specifications are then told apart and never averaged together."""


def metric_spec(ece_bins: int) -> dict[str, Any]:
    """How this code computes the calibration metrics of a run evaluated with ``ece_bins``
    bins; stored with every result (``spec["metric_spec"]``, beside the spec, not hashed).

    The predictive is the mean of the method's S probability samples; the confidence is its
    largest class probability (top label). ``ece`` and ``mce`` bin the confidence into
    ``ece_bins`` equal-width, right-closed bins over [0, 1] (L1 and max norms);
    ``adaptive_ece`` into as many equal-mass bins (sorted confidences split into bins of
    equal counts)."""
    return {
        "version": METRIC_SPEC_VERSION,
        "predictive": "mean of the S probability samples",
        "confidence": "max probability (top label)",
        "ece": {"bins": ece_bins, "binning": "equal-width"},
        "mce": {"bins": ece_bins, "binning": "equal-width"},
        "adaptive_ece": {"bins": ece_bins, "binning": "equal-mass"},
    }


def run_metric_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metric specification of a stored run: the one stored with it, or for runs stored
    before specifications were (all computed by version 1) the one their evaluation settings
    imply; None when neither is known."""
    spec = spec or {}
    if spec.get("metric_spec"):
        return spec["metric_spec"]
    bins = (spec.get("evaluation") or {}).get("ece_bins")
    return metric_spec(int(bins)) if bins is not None else None


def describe_metric_spec(ms: dict[str, Any]) -> str:
    """One line: "ECE and MCE over 15 equal-width bins, adaptive ECE over 15 equal-mass bins,
    of the max probability of the mean predictive (metric spec v1)"."""
    return (f"ECE and MCE over {ms['ece']['bins']} {ms['ece']['binning']} bins, adaptive ECE "
            f"over {ms['adaptive_ece']['bins']} {ms['adaptive_ece']['binning']} bins, of the "
            f"{ms['confidence'].split(' (')[0]} of the mean predictive "
            f"(metric spec v{ms['version']})")


@dataclass
class MetricValue:
    split: str  # "test", "shift/<kind>/<severity>", "ood/<name>", "cost", "fit"
    metric: str  # a name in bayesbench.metrics.METRICS (any name on the "fit" split)
    value: float


@dataclass
class RunResult:
    """One (method label, dataset, seed) run. ``key`` is the hash of its resolved RunSpec."""

    key: str
    label: str
    method: str
    dataset: str
    seed: int
    config_hash: str
    quick: bool
    status: RunStatus
    error: str | None = None
    metrics: list[MetricValue] = field(default_factory=list)
    # Reliability-diagram statistics on the test split: {"n_bins", "counts", "confidence_sum",
    # "correct_sum"}; lets reports draw diagrams without re-running anything.
    reliability: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    device: str = "cpu"
    started_at: str = ""
    finished_at: str = ""
    predictions: bytes | None = None
    """Per evaluation split, what every metric is computed from (bayesbench.predictions,
    compressed); stored in the store's ``predictions`` table, loaded only on request."""

    def metric(self, split: str, metric: str) -> float | None:
        for m in self.metrics:
            if m.split == split and m.metric == metric:
                return m.value
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        d["metrics"] = [MetricValue(**m) for m in d.get("metrics", [])]
        return cls(**d)
