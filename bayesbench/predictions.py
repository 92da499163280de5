"""A run's predictions, kept so that its metrics can be recomputed without retraining.

Per evaluation split (``test``, every ``shift/<kind>/<severity>``, every ``ood/<name>``) a run
keeps what every metric of :mod:`bayesbench.metrics` is a function of:

- ``probs [N, C]``: the predictive, the mean over the method's S probability samples, in
  float64 exactly as the metrics compute it (so rescoring reproduces the stored values
  bit for bit);
- ``expected_entropy [N]``: the mean over the samples of each sample's entropy (with the
  predictive's entropy it gives the mutual information, the OOD score of sampling methods);
  absent for S = 1, where it equals the predictive's entropy;
- ``labels [N]`` (not for OOD inputs) and, where the dataset knows it, ``true_probs [N, C]``.

They are stored compressed (``numpy.savez_compressed``; float64 arrays that float32 holds
exactly as float32) in one blob per run, in the same
transaction as the run (:meth:`bayesbench.store.ResultStore.write`). :func:`rescore` computes
every metric of :func:`bayesbench.runner.evaluate_method` from them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesbench.metrics.classification import _entropy, as_samples
from bayesbench.metrics.ood import ood_metrics_from_scores
from bayesbench.metrics.suite import evaluate_split
from bayesbench.results import TEST_SPLIT, MetricValue

PREDICTIONS_FORMAT = 1


@dataclass
class SplitPredictions:
    probs: np.ndarray
    expected_entropy: np.ndarray | None = None
    labels: np.ndarray | None = None
    true_probs: np.ndarray | None = None
    samples: int = 1

    @classmethod
    def of(cls, samples: Any, labels: Any = None, true_probs: Any = None) -> SplitPredictions:
        """From a method's ``[S, N, C]`` probability samples (as ``Method.predict`` gives)."""
        s = as_samples(samples)
        return cls(
            probs=s.mean(axis=0),
            expected_entropy=_entropy(s).mean(axis=0) if s.shape[0] > 1 else None,
            labels=None if labels is None else _numpy(labels).astype(np.int64),
            true_probs=None if true_probs is None else _numpy(true_probs).astype(np.float64),
            samples=int(s.shape[0]),
        )

    def ood_scores(self) -> dict[str, np.ndarray]:
        """The OOD scores of :data:`bayesbench.metrics.ood.OOD_SCORES`, from the summary."""
        entropy = _entropy(self.probs)
        expected = entropy if self.expected_entropy is None else self.expected_entropy
        return {"max_prob": 1.0 - self.probs.max(axis=1), "entropy": entropy,
                "mutual_info": np.maximum(entropy - expected, 0.0)}


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


_FIELDS = ("probs", "expected_entropy", "labels", "true_probs")


def _compact(a: np.ndarray) -> np.ndarray:
    """float64 values that float32 holds exactly (the predictive of a method with one sample
    is its float32 output) are stored as float32: half the bytes, nothing lost."""
    if a.dtype == np.float64:
        small = a.astype(np.float32)
        if np.array_equal(small.astype(np.float64), a):
            return small
    return a


def _widen(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype == np.float32 else a


def encode(predictions: dict[str, SplitPredictions]) -> bytes:
    """One compressed blob for a run's predictions (split order kept)."""
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, (split, p) in enumerate(predictions.items()):
        index.append({"split": split, "samples": p.samples})
        for name in _FIELDS:
            value = getattr(p, name)
            if value is not None:
                arrays[f"{i}.{name}"] = _compact(value)
    arrays["index"] = np.frombuffer(json.dumps(
        {"format": PREDICTIONS_FORMAT, "splits": index}).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _indexed_splits(data: Any) -> list[dict]:
    """The split entries of an opened blob, after checking its format."""
    index = json.loads(data["index"].tobytes().decode())
    if index.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"stored predictions have format {index.get('format')}, this "
                         f"bayesbench reads format {PREDICTIONS_FORMAT}")
    return index["splits"]


def _split_at(data: Any, present: set[str], i: int, entry: dict, fields: Sequence[str]
              ) -> SplitPredictions:
    values = {name: _widen(data[f"{i}.{name}"]) if name in fields and f"{i}.{name}" in present
              else None for name in _FIELDS}
    return SplitPredictions(samples=int(entry["samples"]), **values)


def decode(blob: bytes, wanted: Callable[[str], bool] | None = None,
           fields: Sequence[str] = _FIELDS) -> dict[str, SplitPredictions]:
    """The inverse of :func:`encode`; with ``wanted``, only the splits whose name it accepts,
    and of those only the arrays named in ``fields`` (the others are None): only those
    arrays are decompressed."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"no such stored field: {', '.join(sorted(unknown))}")
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        present = set(data.files)
        return {entry["split"]: _split_at(data, present, i, entry, fields)
                for i, entry in enumerate(_indexed_splits(data))
                if wanted is None or wanted(entry["split"])}


def decode_split(blob: bytes, split: str) -> SplitPredictions | None:
    """One split of :func:`decode` (None when the run kept none for it); decompresses only
    that split's arrays."""
    return decode(blob, lambda name: name == split).get(split)


def rescore(predictions: dict[str, SplitPredictions], n_bins: int) -> list[MetricValue]:
    """Every metric of the test, shifted and OOD splits from stored predictions, with
    ``n_bins`` calibration bins (the metrics ``evaluate_method`` stores, cost and fit aside)."""
    out: list[MetricValue] = []
    test = predictions.get(TEST_SPLIT)
    for split, p in predictions.items():
        if split.startswith("ood/"):
            if test is None:
                raise ValueError("stored predictions have OOD sets but no test split")
            out += [MetricValue(split, k, float(v)) for k, v in
                    ood_metrics_from_scores(test.ood_scores(), p.ood_scores()).items()]
        else:
            if p.labels is None:
                raise ValueError(f"stored predictions of {split} have no labels")
            out += [MetricValue(split, k, v) for k, v in evaluate_split(
                p.probs, p.labels, n_bins=n_bins, true_probs=p.true_probs).items()]
    return out
