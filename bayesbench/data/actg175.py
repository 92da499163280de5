"""ACTG 175 (the AIDS Clinical Trials Group study 175, inside the ``lifelines`` wheel): a clinical
outcome from baseline covariates, with a graded shift toward patients with more advanced
disease and a held-out patient cohort.

Shift: graded mixtures of the test patients and a far cohort of lower baseline CD4 counts, at
the test split's class balance; OOD: the haemophilia cohort (never in any split), permuted
features, out-of-range measurements."""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from bayesbench.data.base import Dataset
from bayesbench.data.breast_cancer import cohort_mixture, stratified_population_split
from bayesbench.data.files import standardize
from bayesbench.data.splits import seeded_rng, split_state, stratified_split
from bayesbench.errors import DataError
from bayesbench.task import Split, Task

PACKAGE = "lifelines"
INSTALL_HINT = "pip install 'bayesbench[clinical]' (or pip install lifelines)"
CSV = "ACTG175.csv"

OUTCOME = "cens"
"""1 = the trial's primary endpoint was observed (a CD4 decline of at least 50%, an
AIDS-defining event, or death), 0 = followed to censoring without it."""

MEASUREMENTS = ("age", "wtkg", "karnof", "cd40", "cd80", "preanti")
"""Continuous baseline covariates: age (years), weight (kg), Karnofsky score, CD4 and CD8
counts (cells/mm³), days of antiretroviral therapy before the trial."""
INDICATORS = ("homo", "drugs", "oprior", "z30", "race", "gender", "str2", "symptom")
"""Binary baseline covariates: homosexual activity, intravenous drug use, non-zidovudine
antiretroviral therapy before, zidovudine in the 30 days before, race (1 = non-white),
gender (1 = male), antiretroviral history (1 = experienced), symptomatic HIV infection."""
ARMS = ("zidovudine", "zidovudine+didanosine", "zidovudine+zalcitabine", "didanosine")
"""The randomised arms (``arms`` 0..3), one indicator each: assigned at baseline."""
FEATURES = (*MEASUREMENTS, *INDICATORS, *(f"arm: {a}" for a in ARMS))
"""The model's 18 input columns, in order. Left out: ``hemo`` (constant once the haemophilia
cohort is held out), ``zprior`` (1 for everyone), ``strat`` and ``treat`` (functions of
``str2``/``preanti`` and of ``arms``), and everything measured after baseline (``cd420``,
``cd496``, ``r``, ``cd820``, ``offtrt``, ``days``)."""

HELD_OUT = "hemo"
"""Patients with haemophilia (180, infected through blood products) form the OOD cohort."""

NUM_BANDS = 5
MIN_TEST_SIZE = 40
OUT_OF_RANGE_FEATURES = 2
"""Measurements replaced by out-of-range values in each row of the ``out_of_range`` OOD set."""


def csv_path() -> Path:
    """``lifelines/datasets/ACTG175.csv``, located without importing lifelines (which pulls in
    autograd, formulaic and matplotlib)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"actg175 needs the {PACKAGE} package, whose wheel ships {CSV}: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / CSV
    if not path.is_file():
        raise DataError(
            f"actg175: {path} is missing; install a lifelines that ships it: "
            f"pip install '{PACKAGE}>=0.30'"
        )
    return path


_NEEDED_COLUMNS = (*MEASUREMENTS, *INDICATORS, "arms", OUTCOME, HELD_OUT, "pidnum")


def _missing_columns_error(path: Path, missing: list[str]) -> DataError:
    return DataError(f"actg175: {path} lacks the columns {', '.join(missing)}; reinstall "
                     f"lifelines: pip install --force-reinstall '{PACKAGE}>=0.30'")


@functools.lru_cache(maxsize=2)
def cohort_class_counts(path: Path) -> np.ndarray:
    """Patients per outcome class outside the held-out cohort, ``[2]``: all a config check
    needs, read with the csv module (``load_table`` needs pandas, 0.6 s to import, which a run
    from a warm dataset cache never does). DataError if a needed column is missing."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [c for c in _NEEDED_COLUMNS if c not in header]
        if missing:
            raise _missing_columns_error(path, missing)
        outcome, held = header.index(OUTCOME), header.index(HELD_OUT)
        outcomes = [int(float(row[outcome])) for row in reader if float(row[held]) != 1]
    return np.bincount(np.array(outcomes, dtype=np.int64), minlength=2)


@functools.lru_cache(maxsize=2)
def load_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features ``[N, 18]`` float64 in :data:`FEATURES` order, outcome ``[N]``, the held-out
    cohort flag ``[N]`` bool, patient ids ``[N]``) for all 2,139 patients, in file order
    (cached: treat the arrays as read-only)."""
    import pandas as pd  # on a build only: a cached task never reads the table

    table = pd.read_csv(path)
    missing = [c for c in _NEEDED_COLUMNS if c not in table.columns]
    if missing:
        raise _missing_columns_error(path, missing)
    arms = table["arms"].to_numpy()
    columns = [table[c].to_numpy(dtype=np.float64) for c in (*MEASUREMENTS, *INDICATORS)]
    columns += [(arms == a).astype(np.float64) for a in range(len(ARMS))]
    return (np.stack(columns, axis=1), table[OUTCOME].to_numpy(dtype=np.int64),
            table[HELD_OUT].to_numpy() == 1, table["pidnum"].to_numpy())


def _test_sizes(
    class_counts: np.ndarray, quantile: float, test_fraction: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """(test split size, most test patients per class, far-cohort patients per class), for
    ``class_counts`` patients per class cut at ``quantile`` (scikit-learn rounds the test
    size up and stratifies to a patient)."""
    inside = np.array([round(quantile * n) for n in class_counts])
    n_test = math.ceil(test_fraction * inside.sum())
    most = np.ceil(n_test * inside / inside.sum()).astype(int)
    return n_test, most, class_counts - inside


class ACTG175(Dataset):
    """Predict whether an HIV-infected adult reaches the ACTG 175 trial's primary endpoint
    (``cens``: a CD4 decline of at least 50%, an AIDS-defining event, or death) from baseline
    covariates, and whether the model survives a move to patients with more advanced disease.

    Data: ACTG 175 (Hammer et al., NEJM 1996), a randomised trial of four antiretroviral
    regimens in 2,139 adults with CD4 counts of 200-500 cells/mm³, followed 14-1,231 days;
    the ``ACTG175`` table of R's speff2trial as shipped in the ``lifelines`` 0.30.3 wheel
    (``lifelines/datasets/ACTG175.csv``, about 185 kB; lifelines is MIT-licensed; the same
    table is UCI ML repository dataset 890, CC BY 4.0). 521 patients reached the endpoint.

    Outcome. ``cens`` is the trial's own primary endpoint and the target of UCI's version of
    the data; other candidates predicted worse or needed post-baseline data. It is a binary
    label over unequal follow-up: a patient censored early (10% of the censored ones before
    day 594) counts as no event. Inputs are the 18 baseline columns of :data:`FEATURES`
    (treatment arm included: it is randomised at entry). From them the outcome is only
    modestly predictable: logistic regression reaches AUROC about 0.72 against a majority
    rate of 0.75 on the default in-distribution patients, so accuracy moves little and NLL,
    ECE and AUROC carry most of the signal.

    Held-out cohort. The 180 patients with haemophilia (``hemo = 1``: infected through blood
    products; younger, 97% male, 5% homosexual contact against 72% elsewhere) are in no split:
    they are the OOD set ``haemophilia_cohort``, real patients of a cohort the model never saw.

    Population shift. A risk model built in one clinic is used where patients come later in
    their disease; the endpoint's prevalence is held fixed so that only the covariates move
    (the paper's adult -> newborn ICU shift is a change of case mix of the same kind). Let
    q = ``in_distribution_quantile`` (0.6) and v = ``shift_feature`` (``cd40``, the baseline
    CD4 count, the marker of HIV disease stage and the trial's entry criterion). Within each
    class the remaining 1,959 patients are ranked by v (:func:`~bayesbench.data.
    breast_cancer.stratified_population_split`; ``far_side = "low"`` puts the lowest values
    beyond the cut): the round(q N_c) on the near side are in distribution (1,175 by default:
    887 without and 288 with an event), split stratified into train / val / test by
    ``val_fraction`` and ``test_fraction`` (704 / 177 / 294); the rest (784) are the far
    cohort (192 with an event). The shifted sets ``population`` k = 1..5 are graded mixtures
    (:func:`~bayesbench.data.breast_cancer.cohort_mixture`): for each class, round(k/5 · n_c)
    far patients and the rest test patients, so every set has the test split's size and class
    counts exactly and severity 5 is the far cohort alone (CD4 at or below that of every
    in-distribution patient of its class; ties at the cut go by row order).

    Why this shift: with logistic regression as a probe (seeds 0-2, far sets at the test
    balance), the cohort shifts this table offers by age, weight, race, sex or transmission
    group leave accuracy within 0.03 of the test split (nothing graded to measure); treatment
    history (naive -> experienced) makes ``preanti`` and ``str2`` constant in training. The
    CD4 cut gives a clear fall (0.79 -> 0.53) while AUROC does not drop (0.72 -> 0.78): the
    far cohort's patients without an event look like high-risk ones, so a model trained
    nearer the cut over-predicts the event: a calibration failure under covariate shift.

    Inputs are ``features``: ``x: [N, 18]`` float32, standardised with the training split's
    per-column mean and sd (one token per column). OOD sets: ``haemophilia_cohort`` (180),
    ``permuted_features`` (each column of the test patients permuted independently across
    them) and ``out_of_range`` (test patients with :data:`OUT_OF_RANGE_FEATURES` random
    measurements set 1 to 4 training sds beyond the training maximum), the last two as many
    as the test split. Deterministic in the seed.
    """

    name = "actg175"
    description = (
        "ACTG 175 HIV trial (lifelines wheel, MIT; R speff2trial table; 2,139 patients, 18 "
        "baseline covariates): primary endpoint; shift toward lower baseline CD4 at the test "
        "class balance; haemophilia cohort, permuted features, out-of-range values as OOD"
    )

    def __init__(
        self,
        shift_feature: str = "cd40",
        far_side: str = "low",
        in_distribution_quantile: float = 0.6,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
    ) -> None:
        if shift_feature not in MEASUREMENTS:
            raise DataError(
                f"actg175: shift_feature={shift_feature!r} is not a baseline measurement; "
                f"choose one of: {', '.join(MEASUREMENTS)}"
            )
        if far_side not in ("low", "high"):
            raise DataError(
                f"actg175: far_side={far_side!r} must be 'low' (the far cohort has the lowest "
                "values of shift_feature) or 'high'"
            )
        for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                             ("in_distribution_quantile", in_distribution_quantile)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < 1:
                raise DataError(f"actg175: {param}={value!r} must lie in (0, 1), e.g. 0.2")
        if val_fraction + test_fraction >= 0.8:
            raise DataError(
                f"actg175: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                "leaves under 20% for training; make their sum less than 0.8"
            )
        self.path = csv_path()  # a missing package fails here, at config time
        class_counts = cohort_class_counts(self.path)

        def fits(quantile: float) -> bool:
            n_test, most, far = _test_sizes(class_counts, quantile, test_fraction)
            return n_test >= MIN_TEST_SIZE and bool(np.all(far >= most))

        valid = [q / 100 for q in range(5, 100) if fits(q / 100)]
        if not valid:
            raise DataError(
                f"actg175: test_fraction={test_fraction:g} leaves no in_distribution_quantile "
                f"with a test split of at least {MIN_TEST_SIZE} patients and enough far "
                "patients per class for sets of its size; use test_fraction=0.25"
            )
        if not (valid[0] <= in_distribution_quantile <= valid[-1]
                and fits(in_distribution_quantile)):
            raise DataError(
                f"actg175: in_distribution_quantile={in_distribution_quantile!r} must lie in "
                f"[{valid[0]:g}, {valid[-1]:g}] with test_fraction={test_fraction:g}, so that "
                "each class has at least as many patients beyond its cut as in the test "
                "split, whose size every shifted set copies; e.g. 0.6"
            )
        self.shift_feature = shift_feature
        self.far_side = far_side
        self.in_distribution_quantile = float(in_distribution_quantile)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def check(self) -> None:
        """The lifelines package and its ACTG175.csv are installed (DataError with the fix)."""
        cohort_class_counts(csv_path())

    def patients(self, seed: int) -> dict[str, np.ndarray]:
        """Row indices into ACTG175.csv: ``train``, ``val``, ``test``, ``far`` (the far
        cohort), ``held_out`` (the haemophilia cohort) and ``population:k`` (shifted set k)."""
        features, outcome, held, _ = load_table(self.path)
        rows = np.flatnonzero(~held)
        values = features[rows, MEASUREMENTS.index(self.shift_feature)]
        # stratified_population_split keeps the smallest values in distribution
        near, far = stratified_population_split(
            -values if self.far_side == "low" else values, outcome[rows],
            self.in_distribution_quantile,
        )
        near, far = rows[near], rows[far]
        train, val, test = stratified_split(near, outcome, self.val_fraction,
                                            self.test_fraction, split_state(seed))
        out = {"train": train, "val": val, "test": test,
               "far": far, "held_out": np.flatnonzero(held)}
        bands = cohort_mixture(out["test"], far, outcome, seeded_rng(seed, "shift:population"))
        out.update({f"population:{k}": band for k, band in enumerate(bands, 1)})
        return out

    def build(self, seed: int) -> Task:
        """Splits, shifted sets and OOD sets for this seed (same seed, same tensors)."""
        features, outcome, _, _ = load_table(self.path)
        rows = self.patients(seed)
        train = features[rows["train"]]
        mean, sd = train.mean(0), train.std(0)

        def to_x(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(standardize(values, mean, sd), dtype=torch.float32)

        def split(index: np.ndarray) -> Split:
            return Split(to_x(features[index]), torch.as_tensor(outcome[index]))

        test = features[rows["test"]]
        perm_rng = seeded_rng(seed, "ood:permuted_features")
        permuted = np.stack([perm_rng.permutation(test[:, j]) for j in range(test.shape[1])], 1)
        range_rng = seeded_rng(seed, "ood:out_of_range")
        out_of_range = test.copy()
        top, spread = train.max(0), np.where(sd > 0, sd, 1.0)
        for row in out_of_range:
            cols = range_rng.choice(len(MEASUREMENTS), OUT_OF_RANGE_FEATURES, replace=False)
            row[cols] = top[cols] + range_rng.uniform(1.0, 4.0, len(cols)) * spread[cols]

        return Task(
            name=self.name,
            input_kind="features",
            num_classes=2,
            train=split(rows["train"]),
            val=split(rows["val"]),
            test=split(rows["test"]),
            shifted={"population": {k: split(rows[f"population:{k}"])
                                    for k in range(1, NUM_BANDS + 1)}},
            ood={
                "haemophilia_cohort": to_x(features[rows["held_out"]]),
                "permuted_features": to_x(permuted),
                "out_of_range": to_x(out_of_range),
            },
            class_names=["no event", "event"],
        )
