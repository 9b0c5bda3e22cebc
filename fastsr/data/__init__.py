"""Data for fastsr: image files, data sources, the LR degradation, and loaders of (HR, LR) batches."""

from fastsr.data.degradation import degrade, lr_crop, lr_for_eval, random_crop_pair
from fastsr.data.div2k import DownloadError, download_div2k
from fastsr.data.images import IMAGE_EXTS, ImageError, image_to_tensor, list_images, load_image, save_image
from fastsr.data.loader import TrainLoader, load_val_set
from fastsr.data.sources import BUILTIN_SOURCES, Sample, resolve_source

__all__ = [
    "BUILTIN_SOURCES",
    "DownloadError",
    "IMAGE_EXTS",
    "ImageError",
    "Sample",
    "TrainLoader",
    "degrade",
    "download_div2k",
    "image_to_tensor",
    "list_images",
    "load_image",
    "load_val_set",
    "lr_crop",
    "lr_for_eval",
    "random_crop_pair",
    "resolve_source",
    "save_image",
]
