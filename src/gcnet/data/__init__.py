"""Datasets, dataset metadata, augmentation and the synthetic demo dataset."""

from gcnet.data.datasets import DATASET_KINDS, SegmentationDataset, build_dataset, read_image
from gcnet.data.metadata import DatasetInfo, colorize, get_dataset_info, list_datasets, overlay
from gcnet.data.synthetic import make_synthetic_dataset
from gcnet.data.transforms import MEAN, STD, EvalTransform, TrainTransform, denormalize, normalize

__all__ = [
    "DATASET_KINDS",
    "SegmentationDataset",
    "build_dataset",
    "read_image",
    "DatasetInfo",
    "colorize",
    "get_dataset_info",
    "list_datasets",
    "overlay",
    "make_synthetic_dataset",
    "MEAN",
    "STD",
    "EvalTransform",
    "TrainTransform",
    "denormalize",
    "normalize",
]
