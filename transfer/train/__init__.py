"""Fine-tuning: the options of a run and the two-phase plan."""

from transfer.train.finetune import RunResult, finetune, head_model, pooled_features
from transfer.train.options import FinetuneOptions, resolve_options
