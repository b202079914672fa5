"""ONNX (.onnx), converted by tf2onnx, for onnxruntime and the runtimes that read
ONNX; the metadata (class names, input size and pixels) is in `metadata_props`,
each value JSON."""

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from transfer.export.common import SERVING_INPUT, Runner, output_name, pixels_function
from transfer.export.optional import optional_module
from transfer.io import write_bytes
from transfer.runs import labels_beside, read_labels

SUFFIX = ".onnx"
KIND = "ONNX"
OPSET = 17  # onnxruntime 1.16 and later run it


def write(model, out, info):
    write_bytes(out, _convert(model, info).SerializeToString())


def _convert(model, info):
    """tf2onnx on the frozen graph of the uint8 pixel function.

    Keras' own `model.export(format="onnx")` (tf2onnx's from_function) leaves a
    Normalization layer's mean and variance as extra graph inputs (Keras 3.15,
    tf2onnx 1.17); freezing the function first makes them constants.
    """
    tf2onnx = optional_module("tf2onnx")
    optional_module("onnx")
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # noqa: PLC0415
    from tensorflow.python.framework.convert_to_constants import (  # noqa: PLC0415
        convert_variables_to_constants_v2,
    )

    with warnings.catch_warnings():  # the patch's own probe of np.object warns
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()  # tf2onnx 1.17 predates numpy 2; Keras ships the patch it needs
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)  # deprecation notes of TF1 APIs tf2onnx calls
    try:
        frozen = convert_variables_to_constants_v2(
            pixels_function(model, info.image_size).get_concrete_function()
        )
        graph_input, graph_output = frozen.inputs[0].name, frozen.outputs[0].name
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(),
            input_names=[graph_input],
            output_names=[graph_output],
            opset=OPSET,
        )
    finally:
        tf_logger.setLevel(level)
    _rename(proto.graph, {graph_input: SERVING_INPUT, graph_output: output_name(model)})
    for key, value in info.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, ensure_ascii=False)
    return proto


def _rename(graph, names):
    """Give the graph's input and output the names of the other exports."""
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]


def read_metadata(session):
    return {
        key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()
    }


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path, image_size=None):
        onnxruntime = optional_module("onnxruntime")
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.metadata = read_metadata(self.session)
        self.class_names = self.metadata.get("class_names") or read_labels(labels_beside(path))
        self._input = self.session.get_inputs()[0]
        self.input_shape = _declared(self._input.shape)
        self.output_shapes = [_declared(o.shape) for o in self.session.get_outputs()]
        self.image_size = tuple(
            image_size or self.metadata.get("image_size") or self._input.shape[1:3]
        )

    def predict(self, images):
        return np.asarray(self.session.run(None, {self._input.name: images})[0], dtype=np.float32)


def _declared(shape):
    """An ONNX shape with its named (symbolic) dimensions as None."""
    return tuple(d if isinstance(d, int) else None for d in shape)


def load(path, image_size=None):
    return OnnxRunner(path, image_size)
