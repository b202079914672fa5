"""Pretrained weights, by job: `download` finds the official ImageNet files,
`formats` reads (and writes) weight files of every Keras format, `torch` reads
torchvision/timm checkpoints, and `load` puts a file's arrays into a model."""
