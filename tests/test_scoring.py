"""Loading saved predictions and scoring them; every bad file names itself in the error."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from bayesbench.errors import ConfigError, InputFileError
from bayesbench.metrics import METRICS, evaluate_ood, evaluate_split
from bayesbench.scoring import load_array, score_predictions

RNG = np.random.default_rng(0)
PROBS = RNG.dirichlet(np.ones(3), size=12)
LABELS = RNG.integers(0, 3, size=12)
OOD = RNG.dirichlet(np.ones(3), size=7)


def write_csv(path, rows, header=None):
    lines = [] if header is None else [",".join(header)]
    lines += [",".join(str(v) for v in np.atleast_1d(row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- loaders ---------------------------------------------------------------------------------


def test_npy_round_trip(tmp_path):
    np.save(tmp_path / "p.npy", PROBS)
    np.testing.assert_array_equal(load_array(tmp_path / "p.npy", "probs"), PROBS)
    np.save(tmp_path / "s.npy", np.stack([PROBS, PROBS]))
    assert load_array(str(tmp_path / "s.npy"), "probs").shape == (2, 12, 3)


def test_npz_single_array_and_named_arrays(tmp_path):
    np.savez(tmp_path / "one.npz", whatever=PROBS)
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz", "probs"), PROBS)
    np.savez(tmp_path / "both.npz", probs=PROBS, labels=LABELS)
    np.testing.assert_array_equal(load_array(tmp_path / "both.npz", "probs"), PROBS)
    np.testing.assert_array_equal(load_array(tmp_path / "both.npz", "labels"), LABELS)
    np.savez(tmp_path / "samples.npz", samples=PROBS[None], extra=np.zeros(2))
    np.testing.assert_array_equal(load_array(tmp_path / "samples.npz", "probs"), PROBS[None])


def test_csv_round_trip_with_and_without_header(tmp_path):
    plain = write_csv(tmp_path / "p.csv", [row.tolist() for row in PROBS])
    np.testing.assert_allclose(load_array(plain, "probs"), PROBS)
    headed = write_csv(tmp_path / "ph.csv", [row.tolist() for row in PROBS], ["a", "b", "c"])
    np.testing.assert_allclose(load_array(headed, "probs"), PROBS)
    labels = write_csv(tmp_path / "y.csv", LABELS, ["label"])
    loaded = load_array(labels, "labels")
    assert loaded.shape == (12,) and loaded.dtype.kind == "i"
    np.testing.assert_array_equal(loaded, LABELS)
    np.testing.assert_array_equal(
        load_array(write_csv(tmp_path / "y2.csv", LABELS), "labels"), LABELS
    )


# --- scoring ---------------------------------------------------------------------------------


def test_score_files_equals_scoring_arrays(tmp_path):
    np.save(tmp_path / "p.npy", PROBS)
    write_csv(tmp_path / "y.csv", LABELS, ["y"])
    np.savez(tmp_path / "ood.npz", probs=OOD, labels=np.zeros(7))
    out = score_predictions(tmp_path / "p.npy", tmp_path / "y.csv", tmp_path / "ood.npz", n_bins=5)
    assert set(out) == {"test", "ood"}
    assert out["test"] == pytest.approx(evaluate_split(PROBS, LABELS, n_bins=5))
    assert out["ood"] == pytest.approx(evaluate_ood(PROBS, OOD))
    assert all(k in METRICS for split in out.values() for k in split)
    assert all(type(v) is float for split in out.values() for v in split.values())


def test_score_samples_uses_their_mean_and_no_ood_entry_without_ood(tmp_path):
    samples = RNG.dirichlet(np.ones(3), size=(4, 12))
    out = score_predictions(samples, LABELS)
    assert set(out) == {"test"}
    assert out["test"]["accuracy"] == pytest.approx(np.mean(samples.mean(0).argmax(1) == LABELS))
    # [N, 1] labels are accepted
    assert score_predictions(samples, LABELS[:, None]) == out


def test_bad_bins_is_a_config_error():
    with pytest.raises(ConfigError, match="--bins"):
        score_predictions(PROBS, LABELS, n_bins=0)
    with pytest.raises(ConfigError, match="--bins must be an integer from 1 to 1000, got 5000"):
        score_predictions(PROBS, LABELS, n_bins=5000)
    assert score_predictions(PROBS, LABELS, n_bins=1000)["test"]["ece"] >= 0


def _probs_file(tmp_path, array=PROBS, name="model_probs.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


def _labels_file(tmp_path, array=LABELS, name="model_labels.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


def case_missing(tmp_path):
    return tmp_path / "nowhere.npy", _labels_file(tmp_path), None, "nowhere.npy", "does not exist"


def case_unreadable(tmp_path):
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file at all")
    return tmp_path / "garbage.npy", _labels_file(tmp_path), None, "garbage.npy", "not a numpy"


def case_truncated(tmp_path):
    data = _probs_file(tmp_path, PROBS, "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.npy", _labels_file(tmp_path), None, "cut.npy", "cannot be read"


def case_bad_zip(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"PK not really a zip")
    return tmp_path / "garbage.npz", _labels_file(tmp_path), None, "garbage.npz", "not a numpy"


def case_wrong_extension(tmp_path):
    (tmp_path / "probs.txt").write_text("0.5 0.5\n")
    return tmp_path / "probs.txt", _labels_file(tmp_path), None, "probs.txt", r"\.npy"


def case_wrong_ndim_probs(tmp_path):
    probs = _probs_file(tmp_path, PROBS[None, None], "deep.npy")
    return probs, _labels_file(tmp_path), None, "deep.npy", "4 dimensions"


def case_wrong_ndim_labels(tmp_path):
    labels = _labels_file(tmp_path, np.stack([LABELS, LABELS], 1), "wide_labels.npy")
    return _probs_file(tmp_path), labels, None, "wide_labels.npy", "1-D"


def case_n_mismatch(tmp_path):
    labels = _labels_file(tmp_path, LABELS[:10], "short_labels.npy")
    return _probs_file(tmp_path), labels, None, "short_labels.npy", "10 labels.*12 rows"


def case_non_integer_labels(tmp_path):
    labels = _labels_file(tmp_path, LABELS + 0.5, "half_labels.npy")
    return _probs_file(tmp_path), labels, None, "half_labels.npy", "integer"


def case_labels_out_of_range(tmp_path):
    labels = _labels_file(tmp_path, np.where(LABELS == 0, 3, LABELS), "big_labels.npy")
    return _probs_file(tmp_path), labels, None, "big_labels.npy", r"\[0, 3\)"


def case_negative_labels(tmp_path):
    labels = _labels_file(tmp_path, LABELS - 1, "neg_labels.npy")
    return _probs_file(tmp_path), labels, None, "neg_labels.npy", r"\[0, 3\)"


def case_nan_probs(tmp_path):
    probs = PROBS.copy()
    probs[3, 1] = np.nan
    return (
        _probs_file(tmp_path, probs, "nan_probs.npy"),
        _labels_file(tmp_path),
        None,
        "nan_probs.npy",
        "NaN",
    )


def case_inf_labels(tmp_path):
    labels = LABELS.astype(float)
    labels[2] = np.inf
    return (
        _probs_file(tmp_path),
        _labels_file(tmp_path, labels, "inf_labels.npy"),
        None,
        "inf_labels.npy",
        "infinite",
    )


def case_logits(tmp_path):
    logits = np.log(PROBS) + 1.0
    return (
        _probs_file(tmp_path, logits, "logits.npy"),
        _labels_file(tmp_path),
        None,
        "logits.npy",
        "logits.*softmax",
    )


def case_unnormalised(tmp_path):
    return (
        _probs_file(tmp_path, PROBS * 0.9, "scaled.npy"),
        _labels_file(tmp_path),
        None,
        "scaled.npy",
        "do not sum to 1.*softmax",
    )


def case_class_mismatch_ood(tmp_path):
    ood = _probs_file(tmp_path, np.full((5, 4), 0.25), "ood4.npy")
    return _probs_file(tmp_path), _labels_file(tmp_path), ood, "ood4.npy", "4 classes.*3"


def case_logits_ood(tmp_path):
    ood = _probs_file(tmp_path, np.log(OOD), "ood_logits.npy")
    return _probs_file(tmp_path), _labels_file(tmp_path), ood, "ood_logits.npy", "softmax"


def case_npz_unknown_names(tmp_path):
    np.savez(tmp_path / "bundle.npz", alpha=PROBS, beta=LABELS)
    return tmp_path / "bundle.npz", _labels_file(tmp_path), None, "bundle.npz", "alpha.*beta"


def case_csv_non_numeric(tmp_path):
    rows = [row.tolist() for row in PROBS]
    rows[4][1] = "oops"
    return (
        write_csv(tmp_path / "text.csv", rows),
        _labels_file(tmp_path),
        None,
        "text.csv",
        "'oops'.*row 5, column 2",
    )


def case_csv_empty(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    return tmp_path / "empty.csv", _labels_file(tmp_path), None, "empty.csv", "empty"


def case_string_npy(tmp_path):
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    return _probs_file(tmp_path), tmp_path / "words.npy", None, "words.npy", "numbers"


def _npy_bytes(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _lying_npy(rows=10**13):
    """A .npy whose header claims ``rows`` x 3 float64 values but holds 12 bytes of data."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                            "shape": (rows, 3)})
    return buf.getvalue() + bytes(12)


def case_npz_member_not_npy(tmp_path):
    with zipfile.ZipFile(tmp_path / "text_member.npz", "w") as zf:
        zf.writestr("probs.txt", "0.5,0.5")
    return (tmp_path / "text_member.npz", _labels_file(tmp_path), None, "text_member.npz",
            "holds no numpy arrays.*'probs.txt'")


def case_npz_pickled_objects(tmp_path):
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as zf:
        zf.writestr("probs.npy", _npy_bytes(np.array([{"p": 1}], dtype=object), True))
    return (tmp_path / "objects.npz", _labels_file(tmp_path), None, "objects.npz",
            "array 'probs', holds Python objects")


def case_npy_pickled_objects(tmp_path):
    (tmp_path / "objects.npy").write_bytes(_npy_bytes(np.array([None, 1]), True))
    return (tmp_path / "objects.npy", _labels_file(tmp_path), None, "objects.npy",
            "holds Python objects")


def case_npy_header_claims_huge_shape(tmp_path):
    (tmp_path / "huge.npy").write_bytes(_lying_npy())
    return (tmp_path / "huge.npy", _labels_file(tmp_path), None, "huge.npy",
            r"header claims shape \(10000000000000, 3\) of float64 "
            r"\(240,000,000,000,000 bytes\) but only 12 bytes follow")


def case_npz_member_header_claims_huge_shape(tmp_path):
    with zipfile.ZipFile(tmp_path / "huge.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.npy", _lying_npy())
    return (_probs_file(tmp_path), tmp_path / "huge.npz", None, "huge.npz",
            "array 'labels', cannot be read as .npy: its header claims shape")


def case_npz_entry_claims_huge_size(tmp_path):
    np.savez(tmp_path / "sized.npz", probs=PROBS)
    data = bytearray((tmp_path / "sized.npz").read_bytes())
    # the central directory's uncompressed size (offset 24 of the entry) claims 4 GB
    at = data.rindex(b"PK\x01\x02") + 24
    data[at:at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    (tmp_path / "sized.npz").write_bytes(bytes(data))
    return (tmp_path / "sized.npz", _labels_file(tmp_path), None, "sized.npz",
            "corrupt zip entry")


BAD_CASES = [v for k, v in dict(globals()).items() if k.startswith("case_")]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.__name__[5:] for c in BAD_CASES])
def test_bad_files_raise_input_file_error_naming_the_file(tmp_path, case):
    probs, labels, ood, file_name, match = case(tmp_path)
    with pytest.raises(InputFileError, match=match) as info:
        score_predictions(probs, labels, ood)
    assert file_name in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
