"""Keras (.keras): the model as it was trained, preprocessing included; loads with
Keras' safe mode and nothing of ours installed."""

from transfer.data.pipeline import images_only
from transfer.export.common import Runner
from transfer.io import save_model
from transfer.runs import load_model, model_metadata
from transfer.runtime import predict_batch, run_inference

SUFFIX = ".keras"
KIND = "Keras"


def write(model, out, info):
    # a classifier keeps its class names, task and thresholds inside
    save_model(
        model,
        out,
        None
        if info.class_names is None
        else model_metadata(info.class_names, info.task, info.thresholds),
    )


class KerasRunner(Runner):
    format = "keras"

    def __init__(self, loaded):
        self.loaded = loaded
        self.path = loaded.path
        self.class_names = loaded.class_names
        self.image_size = loaded.image_size
        self.metadata = {}

    @property
    def task(self):
        return self.loaded.task

    @property
    def thresholds(self):
        return self.loaded.thresholds

    def predict(self, images):
        return predict_batch(self.loaded.model, images.astype("float32"))

    def predict_split(self, split, batch_size, tta=False, verbose=0, description="Inference"):
        return run_inference(
            self.loaded.model,
            images_only(split, self.image_size, batch_size),
            verbose=verbose,
            description=description,
            tta=tta,
        )


def load(path, image_size=None):
    return KerasRunner(load_model(path, image_size=image_size))
