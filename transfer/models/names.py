"""Layer names that other code looks for: one owner for each.

The backbone's names are keras.applications' (they key the official weight files);
the head's are `transfer`'s own, read back when a saved classifier is taken apart.
"""

STEM_CONV = "conv1_conv"  # the first convolution: present in every ResNet variant
CLASSIFIER = "predictions"  # keras.applications' output layer, and our heads' too
TOP_POOLINGS = ("avg_pool", "max_pool")  # keras.applications' pooling after the backbone
PREPROCESSING = "preprocess"  # the layer that turns raw pixels into the backbone's input
INPUT = "pixels"  # the input of classifiers and feature extractors

HEAD_POOL = "head_pool"  # pooled features: where phase 1's feature cache cuts the model
HEAD_STANDARDIZE = "head_standardize"  # pooled features minus their mean, over their std
HEAD_DROPOUT = "head_dropout"
HEAD_HIDDEN = "head_hidden"
HEAD_HIDDEN_DROPOUT = "head_hidden_dropout"
