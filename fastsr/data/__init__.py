"""Data for fastsr: image files, data sources, the decode-once cache, the LR degradation, the crop
plan, and loaders of (HR, LR) batches (torch here; DALI in fastsr.data.dali, imported on demand)."""

from fastsr.data.degradation import crop_pair, degrade, lr_crop, lr_for_eval
from fastsr.data.div2k import DownloadError, download_div2k
from fastsr.data.images import IMAGE_EXTS, ImageError, image_to_tensor, list_images, load_image, read_header, save_image
from fastsr.data.loader import BACKENDS, TrainImages, TrainLoader, load_val_set, make_train_loader
from fastsr.data.plan import Crop, CropPlan, draw_crop
from fastsr.data.sources import BUILTIN_SOURCES, Sample, resolve_source

__all__ = [
    "BACKENDS",
    "BUILTIN_SOURCES",
    "Crop",
    "CropPlan",
    "DownloadError",
    "IMAGE_EXTS",
    "ImageError",
    "Sample",
    "TrainImages",
    "TrainLoader",
    "crop_pair",
    "degrade",
    "download_div2k",
    "draw_crop",
    "image_to_tensor",
    "list_images",
    "load_image",
    "load_val_set",
    "lr_crop",
    "lr_for_eval",
    "make_train_loader",
    "read_header",
    "resolve_source",
    "save_image",
]
