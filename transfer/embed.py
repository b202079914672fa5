"""Embeddings and the linear probe: backbone features of every image in a dataset,
saved as .npz, and a scikit-learn logistic regression trained on them, the fast
baseline to run before fine-tuning."""

import logging
from pathlib import Path

import numpy as np

from transfer.data.pipeline import drop_unreadable, image_dataset
from transfer.data.sources import load_dataset
from transfer.errors import DataError, InvalidArgumentError
from transfer.inference import load_model, run_inference
from transfer.models.heads import feature_extractor
from transfer.report import atomic_path, compute_metrics, prepare_run_dir, write_json, write_reports

logger = logging.getLogger("transfer")


def embed(data, out=None, model=None, depth=50, version="v1", weights="imagenet",
          weights_dir=None, image_size=224, batch_size=32, pooling="avg", val_split=0.2,
          test_split=0.0, tfds_data_dir=None, strict=False):
    """Pooled backbone features for every image of `data`, with labels and splits.

    The backbone is a trained model's (`model`: run directory or .keras file) or a
    fresh ResNet (`depth`, `version`, `weights`). Returns a dict of arrays: features,
    labels, paths, splits, class_names; with `out`, also writes them to a .npz file.
    """
    if model is not None:
        loaded = load_model(model, need_classifier=False)
        extractor = feature_extractor(loaded.model, pooling=pooling)
        image_size = loaded.image_size
        source = str(loaded.path)
    else:
        from transfer.models.resnet import ResNet

        weights = None if str(weights).lower() == "none" else weights
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        backbone = ResNet(depth, version, include_top=False, weights=weights,
                          input_shape=(*size, 3), weights_dir=weights_dir)
        extractor = feature_extractor(backbone, pooling=pooling)
        source = f"{backbone.name} weights={weights}"
    dataset = load_dataset(data, val_split=val_split, test_split=test_split,
                           tfds_data_dir=tfds_data_dir, min_classes=1)
    drop_unreadable(dataset, strict=strict)
    features, labels, paths, splits = [], [], [], []
    for name, split in dataset.splits.items():
        if not len(split):
            continue
        logger.info("Embedding the %s split (%d images)...", name, len(split))
        ds = image_dataset(split, image_size, batch_size, 1, one_hot=False).map(lambda x, y: x)
        features.append(run_inference(extractor, ds, verbose=1))
        labels.append(split.labels)
        paths += list(split.paths)
        splits += [name] * len(split)
    result = {
        "features": np.concatenate(features).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "paths": np.array(paths, dtype=str),
        "splits": np.array(splits, dtype=str),
        "class_names": np.array(dataset.class_names, dtype=str),
        "source": np.array(source),
    }
    if out is not None:
        out = Path(out)
        if out.suffix != ".npz":
            raise InvalidArgumentError(f"--out {out}: embeddings are written as .npz.")
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **result)
    return result


def load_embeddings(path):
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            loaded = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{path} is not an .npz file of `transfer embed`.") from exc
    missing = {"features", "labels", "splits", "class_names", "paths"} - set(loaded)
    if missing:
        raise InvalidArgumentError(
            f"{path} lacks {', '.join(sorted(missing))}: expected an .npz of `transfer embed`.")
    return loaded


def probe(embeddings, out, folds=5, seed=0, overwrite=False):
    """Logistic regression on standardised embeddings, C chosen by cross-validation.

    Trains on the train split; reports on val (and test) like `evaluate`.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_embeddings(embeddings) if not isinstance(embeddings, dict) else embeddings
    class_names = [str(c) for c in data["class_names"]]
    train = data["splits"] == "train"
    evaluated = [s for s in ("val", "test") if (data["splits"] == s).any()]
    if not train.any() or not evaluated:
        raise DataError("The embeddings need a train split and a val or test split; embed "
                        "with --val-split above 0.")
    counts = np.bincount(data["labels"][train], minlength=len(class_names))
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError("The train split holds a single class: a probe needs at least two.")
    cv = StratifiedKFold(n_splits=max(2, min(folds, int(present.min()))), shuffle=True,
                         random_state=seed)
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=10, cv=cv, max_iter=2000, random_state=seed))
    logger.info("Fitting the probe on %d embeddings (%d features)...", int(train.sum()),
                data["features"].shape[1])
    classifier.fit(data["features"][train], data["labels"][train])
    out = prepare_run_dir(out, overwrite=overwrite)
    fitted = classifier[-1]
    metrics = {"classes": class_names, "C": float(np.atleast_1d(fitted.C_)[0]),
               "train_images": int(train.sum())}
    for split in evaluated:
        rows = data["splits"] == split
        probabilities = np.zeros((int(rows.sum()), len(class_names)))
        probabilities[:, fitted.classes_] = classifier.predict_proba(data["features"][rows])
        metrics[split] = compute_metrics(data["labels"][rows], probabilities, class_names)
        write_reports(out, data["labels"][rows], probabilities, class_names,
                      [str(p) for p in data["paths"][rows]],
                      prefix="" if split == evaluated[0] else f"{split}_")
    write_json(out / "metrics.json", metrics)
    return metrics
