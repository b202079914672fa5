"""Training: the options of a run, its two phases, callbacks, the feature cache and
distribution. `transfer.commands.finetune` puts them together."""

from transfer.train.options import FinetuneOptions, resolve_options
