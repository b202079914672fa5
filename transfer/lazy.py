"""TensorFlow and Keras, imported on first use.

Importing TensorFlow takes seconds; `transfer --help`, every `transfer CMD --help`
and argument errors never need it. Modules write `from transfer.lazy import keras, tf`
at the top and use them as the modules themselves.
"""

import importlib


class LazyModule:
    """Stands in for a module and imports it at the first attribute access."""

    def __init__(self, name):
        self._name = name
        self._module = None

    def __getattr__(self, attribute):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self):
        return f"<lazy module {self._name!r}>"


keras = LazyModule("keras")
tf = LazyModule("tensorflow")
layers = LazyModule("keras.layers")
ops = LazyModule("keras.ops")
