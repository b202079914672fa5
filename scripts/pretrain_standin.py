#!/usr/bin/env python
"""Pretrain a ResNet50 (v1) on Fashion-MNIST as a stand-in for the ImageNet weights.

The sample run (`scripts/demo`) fine-tunes ResNet50 from the ImageNet
weights at 96 px. Where those cannot be downloaded, this script makes a pretrained
backbone to measure that run's recipe with (int8's agreement, for one): ResNet50
trained on Fashion-MNIST's 60,000 training images at 96 px, minus the 300 of the
sample in data/fashion-mnist (the first 30 of each class, which the sample run
trains and validates on). It is optimistic as a stand-in: its classes are the
sample's, where ImageNet's are not.

The backbone is keras.applications' ResNet50, so the script runs on any Keras 3
backend (JAX or torch on a GPU machine without TensorFlow); the file it writes is
a Keras weights file that transfer's ResNet50 loads unchanged:

    KERAS_BACKEND=jax python scripts/pretrain_standin.py --out standin.weights.h5
    transfer finetune --data data/fashion-mnist --depth 50 --weights standin.weights.h5 \\
        --image-size 96 --head-epochs 20 --fine-tune-from conv5 --fine-tune-epochs 2

The int8 figures for the sample run (docs/experiments.md) come from two such
backbones, made on one NVIDIA H100 (JAX 0.11, --mixed-precision; 3.3 s an epoch
after a 30 s compile): `--epochs 3` (88.8% on the first 2,048 test images) and
`--epochs 15 --budget 95` (stopped after 13 epochs, 93.3%). It wants a GPU: on a
2-core CPU a step of 8 images at 32 px took 0.76 s (after 47 s of tracing), and an
epoch is 59,700 images.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import fashion_mnist_to_folders as fashion  # noqa: E402
import numpy as np  # noqa: E402

SAMPLE_PER_CLASS = 30  # data/fashion-mnist: --per-class 30 of the train split
# keras.applications' ResNet v1 preprocessing ("caffe"): BGR means subtracted, no
# scaling. The images are grey, so RGB->BGR only decides which mean each channel loses.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)


def training_images(idx_dir):
    """Fashion-MNIST's train split without the sample's images, and 2,048 test images."""
    images, labels = fashion.load_split(idx_dir, "train")
    sample = np.concatenate(
        [
            fashion.selected_indices(labels, c, SAMPLE_PER_CLASS)
            for c in range(len(fashion.CLASS_NAMES))
        ]
    )
    keep = np.setdiff1d(np.arange(len(labels)), sample)
    test_images, test_labels = fashion.load_split(idx_dir, "test")
    return (
        images[keep, ..., None],
        labels[keep].astype("int32"),
        test_images[:2048, ..., None],
        test_labels[:2048].astype("int32"),
    )


def classifier(keras, image_size):
    """28x28 grey pixels in, logits out; the ResNet50 inside is what gets saved."""
    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    pixels = keras.Input((28, 28, 1))
    x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear")(pixels)
    x = keras.layers.Concatenate()([x, x, x])
    # Flips only: RandomTranslation's affine transform made a JAX step 4.5x slower on CPU.
    x = keras.layers.RandomFlip("horizontal")(x)
    x = keras.layers.Normalization(mean=CAFFE_BGR_MEANS, variance=(1, 1, 1))(x)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    logits = keras.layers.Dense(len(fashion.CLASS_NAMES), dtype="float32")(x)
    return keras.Model(pixels, logits), backbone


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The backbone's .weights.h5 file.")
    parser.add_argument("--idx-dir", type=Path, default=fashion.DEBIAN_IDX_DIR)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15, help="Length of the cosine schedule.")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Stop after the epoch that passes this many seconds.",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--mixed-precision", action="store_true", help="bfloat16 compute (on a GPU)."
    )
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(0)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    x, y, x_test, y_test = training_images(args.idx_dir)
    print(
        f"{len(x)} training images (the sample's "
        f"{SAMPLE_PER_CLASS * len(fashion.CLASS_NAMES)} left out), "
        f"{args.image_size} px, backend {keras.backend.backend()}",
        flush=True,
    )
    model, backbone = classifier(keras, args.image_size)
    steps_per_epoch = len(x) // args.batch_size
    warmup = steps_per_epoch  # one epoch of linear warmup, then cosine to zero
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, args.epochs * steps_per_epoch - warmup), warmup_target=2e-3, warmup_steps=warmup
    )
    model.compile(
        keras.optimizers.AdamW(schedule, weight_decay=0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # On TensorFlow, "auto" means XLA: 90 s to compile ResNet50 on a CPU.
        jit_compile=keras.backend.backend() != "tensorflow",
    )

    start = time.time()

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - start
            print(
                f"  epoch {epoch + 1}/{args.epochs}: {seconds:.0f}s, "
                f"loss {logs['loss']:.4f}, accuracy {logs['accuracy']:.4f}",
                flush=True,
            )
            if args.budget is not None and seconds > args.budget:
                print(f"  the budget of {args.budget:.0f}s is spent", flush=True)
                self.model.stop_training = True

    model.fit(
        x.astype("float32"),
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[Progress()],
        shuffle=True,
        verbose=0,
    )
    _, accuracy = model.evaluate(
        x_test.astype("float32"), y_test, batch_size=args.batch_size, verbose=0
    )
    print(
        f"trained in {time.time() - start:.0f}s; accuracy on {len(y_test)} test "
        f"images {accuracy:.4f}",
        flush=True,
    )
    backbone.save_weights(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
