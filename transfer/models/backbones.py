"""The one interface every backbone meets, whichever code builds it: the from-scratch
ResNet (`transfer.models.architectures`) or a keras.applications family
(`transfer.models.families`). Code outside those modules uses only what `Backbone`
declares, and never asks which kind it holds.
"""

# Groups are named after ResNet's stages, by the stride of their output: stem, conv2 (/4),
# conv3 (/8), conv4 (/16), conv5 (/32), post (v2's final BN, another family's last 1x1
# convolution or norm), head. So `--fine-tune-from conv5` means the last stage of any backbone.
STAGES = ("conv2", "conv3", "conv4", "conv5")
GROUPS = ("stem", *STAGES, "post", "head")

MIN_INPUT_SIZE = 32  # keras.applications' minimum, for ResNet and every family here

_BUILDERS = {}  # Backbone subclass -> the function that builds its models


def builds(kind):
    """Register the decorated function as the builder of every backbone of class `kind`.

    The builders sit above the weight loading, which identifies backbones: a row cannot
    import its builder, so the builder names the row's class instead.
    """

    def register(function):
        _BUILDERS[kind] = function
        return function

    return register


class Backbone:
    """What the rest of `transfer` knows of a backbone.

    Each implementation provides:

    - `name`: the --arch name, the key of its weights (the rows of
      `transfer.models.pretrained` whose `model` it is) and of the feature cache;
    - `display_name`: as keras.applications names the model ("ResNet50V2",
      "EfficientNetB0");
    - `preprocessing`: the mode of `transfer.models.preprocessing` its weights expect;
    - `default_size`: the image size its ImageNet weights were trained at;
    - `group_of(layer_name, previous_group)`: the group of one of its layers;
    - `option_values`: the `arch`, `depth` and `version` options with which a run
      records it;
    - `summary_with_top`: whether `transfer info` describes it with its ImageNet classifier.
    """

    groups = GROUPS  # in order; a model may lack some (post in ResNet v1, head without top)
    min_input_size = MIN_INPUT_SIZE

    def group_of(self, layer_name, previous_group):
        """The group of a backbone layer named `layer_name`; a layer that names no group
        (the input, activations, additions) follows the one before it, in
        `previous_group`. keras.applications' top (pooling, classifier) is left to
        `transfer.models.groups`."""
        raise NotImplementedError

    @property
    def option_values(self):
        raise NotImplementedError

    def build(self, include_top=False, weights="imagenet", input_shape=None, weights_dir=None):
        """The Keras model of this backbone, without pooling unless `include_top`.

        `weights` is None, "imagenet" (looked for in `weights_dir`, then Keras' cache,
        then downloaded) or a weights file; `input_shape` is (height, width, channels),
        None for any size.
        """
        return _BUILDERS[type(self)](
            self,
            include_top=include_top,
            weights=weights,
            input_shape=input_shape,
            weights_dir=weights_dir,
        )
