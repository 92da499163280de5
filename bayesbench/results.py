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
