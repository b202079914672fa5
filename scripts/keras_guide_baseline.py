#!/usr/bin/env python
"""The plain-Keras baseline for scripts/benchmark.py: two-phase fine-tuning written
the way Keras' transfer-learning guide does it (keras.applications model,
image_dataset_from_directory, base model called with training=False, phase 2
unfreezes conv5 with a lower learning rate). Prints one JSON line of results."""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--test-data",
        default=None,
        help="A held-out folder of class folders to report accuracy on.",
    )
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.monotonic()
    size = (args.image_size, args.image_size)
    train, val = keras.utils.image_dataset_from_directory(
        args.data,
        validation_split=0.2,
        subset="both",
        seed=args.seed,
        image_size=size,
        batch_size=args.batch_size,
        label_mode="categorical",
    )
    classes = len(train.class_names)
    base = keras.applications.ResNet50(
        weights=args.weights, include_top=False, input_shape=(*size, 3)
    )
    base.trainable = False
    inputs = keras.Input((*size, 3))
    # keras.applications.resnet.preprocess_input (caffe mode), written with ops: the
    # function itself rejects symbolic inputs in Keras 3.15.
    x = keras.ops.flip(inputs, axis=-1) - keras.ops.convert_to_tensor([103.939, 116.779, 123.68])
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.head_epochs, verbose=2)
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith("conv5") and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.05),
            keras.layers.RandomZoom(0.1),
            keras.layers.RandomContrast(0.1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        train.map(lambda a, b: (augment(a, training=True), b)),
        validation_data=val,
        epochs=args.fine_tune_epochs,
        verbose=2,
    )
    _, accuracy = model.evaluate(val, verbose=0)
    results = {"val_accuracy": float(accuracy)}
    if args.test_data:
        test = keras.utils.image_dataset_from_directory(
            args.test_data,
            shuffle=False,
            image_size=size,
            batch_size=args.batch_size,
            label_mode="categorical",
            class_names=train.class_names,
        )
        results["test_accuracy"] = float(model.evaluate(test, verbose=0)[1])
    print(
        json.dumps(
            {
                **results,
                "seconds": time.monotonic() - start,
                "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
