"""The probe at every size: scikit-learn's cross-validation on small data; above
CV_SAMPLE images, C chosen on stratified subsamples and one fit of SoftmaxRegression,
which must be scikit-learn's regression, in bounded memory."""

import tracemalloc

import numpy as np
import pytest

from transfer.train import logistic
from transfer.train.logistic import SoftmaxRegression, fit_logistic_regression, stratified_order


def blobs(n, dim=24, classes=4, seed=0, spread=1.5):
    """Overlapping Gaussian classes: a regression that depends on C."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0, spread / np.sqrt(dim), (classes, dim))
    features = rng.normal(0, 1, (n, dim)) + centres[labels]
    return features.astype("float32"), labels


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_softmax_regression_is_scikit_learns_logistic_regression(classes):
    from sklearn.linear_model import LogisticRegression

    features, labels = blobs(600, classes=classes, seed=classes)
    reference = LogisticRegression(C=0.05, max_iter=2000, tol=1e-8).fit(features, labels)
    fitted = SoftmaxRegression(C=0.05, chunk=64, tol=1e-8).fit(features, labels)
    np.testing.assert_allclose(
        fitted.predict_proba(features), reference.predict_proba(features), atol=1e-3
    )
    assert (fitted.predict(features) == reference.predict(features)).mean() > 0.995
    if classes > 2:  # the same parameters (two classes: scikit-learn keeps one row)
        np.testing.assert_allclose(fitted.coef_, reference.coef_, atol=2e-3)


def test_softmax_regression_reads_a_memory_mapped_file_and_lists_of_arrays(tmp_path):
    features, labels = blobs(900)
    np.save(tmp_path / "f.npy", features)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    whole = SoftmaxRegression(C=1.0, chunk=100).fit(features, labels)
    for given in (mapped, [mapped[:350], mapped[350:]]):
        fitted = SoftmaxRegression(C=1.0, chunk=100).fit(given, labels)
        np.testing.assert_allclose(
            fitted.predict_proba(mapped), whole.predict_proba(features), atol=1e-4
        )


def test_softmax_regression_needs_memory_for_a_chunk_not_for_the_features(tmp_path):
    features, labels = blobs(20_000, dim=128, classes=10)
    np.save(tmp_path / "f.npy", features)  # 10 MB
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    del features
    tracemalloc.start()
    SoftmaxRegression(C=1.0, chunk=1024, max_iter=5).fit(mapped, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < mapped.nbytes / 8, f"{peak / 2**20:.1f} MB for {mapped.nbytes / 2**20:.0f} MB"


def test_every_prefix_of_the_stratified_order_holds_each_class_in_its_share():
    labels = np.repeat([0, 1, 2, 3], [5000, 2500, 400, 100])
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(len(labels)))
    share = np.bincount(labels) / len(labels)
    for size in (100, 1000, 4000):
        counts = np.bincount(labels[order[:size]], minlength=4)
        assert np.all(np.abs(counts - share * size) <= 2), (size, counts)
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def test_above_the_cv_sample_c_comes_from_subsamples_and_scores_like_full_cv(monkeypatch):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    features, labels = blobs(3000, seed=7)
    val_x, val_y = blobs(2000, seed=7)[0][1500:], blobs(2000, seed=7)[1][1500:]
    scaler = StandardScaler().fit(features)
    full = LogisticRegressionCV(
        Cs=logistic.C_GRID, cv=StratifiedKFold(5, shuffle=True, random_state=0), max_iter=2000
    ).fit(scaler.transform(features), labels)
    full_accuracy = full.score(scaler.transform(val_x), val_y)
    monkeypatch.setattr(logistic, "CV_SAMPLE", 400)
    monkeypatch.setattr(logistic, "CV_SAMPLE_MAX", 1600)
    probe = fit_logistic_regression(features, labels, 4)
    assert isinstance(probe[-1], SoftmaxRegression)
    grid = np.logspace(-4, 4, logistic.C_GRID)
    assert np.isclose(grid, logistic.fitted_c(probe), rtol=1e-6).any()
    accuracy = (probe[-1].classes_[probe.predict_proba(val_x).argmax(1)] == val_y).mean()
    assert accuracy >= full_accuracy - 0.01, (accuracy, full_accuracy)
