"""Data: image folders and TFDS datasets, splits, and tf.data pipelines."""

from transfer.data.augment import augmentation
from transfer.data.dataset import Dataset, Split
from transfer.data.pipeline import drop_unreadable, find_unreadable, image_dataset
from transfer.data.sources import load_dataset, load_folder, split_fraction
