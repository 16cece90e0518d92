"""Datasets and input pipelines: sources, seeded batching, on-device augmentation.

Example:
  >>> from jaxconv import data
  >>> ds = data.load_dataset("digits")
  >>> xb, yb = next(data.train_batches(ds.x_train, ds.y_train, 32, seed=0, epoch=0))
  >>> xb.shape, yb.dtype
  ((32, 28, 28, 1), dtype('int32'))
"""

from jaxconv.data.augment import affine_warp as affine_warp
from jaxconv.data.augment import augment as augment
from jaxconv.data.augment import normalize as normalize
from jaxconv.data.augment import random_affine as random_affine
from jaxconv.data.augment import random_crop as random_crop
from jaxconv.data.augment import random_flip as random_flip
from jaxconv.data._download import ChecksumError as ChecksumError
from jaxconv.data._download import default_cache_dir as default_cache_dir
from jaxconv.data._download import download as download
from jaxconv.data.imagenet import IMAGENET_MEAN as IMAGENET_MEAN
from jaxconv.data.imagenet import IMAGENET_STD as IMAGENET_STD
from jaxconv.data.imagenet import decode_predictions as decode_predictions
from jaxconv.data.imagenet import imagenet_classes as imagenet_classes
from jaxconv.data.imagenet import imagenet_preprocess as imagenet_preprocess
from jaxconv.data.pipeline import epoch_permutation as epoch_permutation
from jaxconv.data.pipeline import eval_batches as eval_batches
from jaxconv.data.pipeline import prefetch as prefetch
from jaxconv.data.pipeline import train_batches as train_batches
from jaxconv.data.sources import DATASETS as DATASETS
from jaxconv.data.sources import Dataset as Dataset
from jaxconv.data.sources import load_dataset as load_dataset
from jaxconv.data.sources import read_idx as read_idx

__all__ = ["affine_warp", "augment", "normalize", "random_affine", "random_crop", "random_flip", "ChecksumError", "default_cache_dir", "download",
           "epoch_permutation", "eval_batches", "prefetch", "train_batches", "DATASETS", "Dataset",
           "load_dataset", "read_idx", "IMAGENET_MEAN", "IMAGENET_STD", "decode_predictions",
           "imagenet_classes", "imagenet_preprocess"]
