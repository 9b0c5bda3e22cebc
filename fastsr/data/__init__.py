"""Data for fastsr, in layers: image files and data sources, the decode-once cache, the image store,
the LR degradation, the crop plan, batch sources of (HR, LR) crops behind one Protocol (torch and
device-resident here; DALI in fastsr.data.dali_backend, imported on demand) chosen by one factory,
validation pairs, and the screen that finds unusable images before a run."""

from fastsr.data.batches import BatchSource, make_batch_source
from fastsr.data.cache import open_cache
from fastsr.data.device_backend import DeviceLoader
from fastsr.data.degradation import crop_pair, degrade, lr_crop, lr_for_eval
from fastsr.data.div2k import download_div2k
from fastsr.data.download import DownloadError
from fastsr.data.images import IMAGE_EXTS, ImageError, image_to_tensor, list_images, load_image, read_header, save_image
from fastsr.data.plan import Crop, CropPlan, draw_crop
from fastsr.data.screen import load_val_set
from fastsr.data.sources import BUILTIN_SOURCES, Sample, resolve_source
from fastsr.data.store import ImageStore
from fastsr.data.torch_backend import TorchLoader

__all__ = [
    "BUILTIN_SOURCES",
    "BatchSource",
    "Crop",
    "CropPlan",
    "DeviceLoader",
    "DownloadError",
    "IMAGE_EXTS",
    "ImageError",
    "ImageStore",
    "Sample",
    "TorchLoader",
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
    "make_batch_source",
    "open_cache",
    "read_header",
    "resolve_source",
    "save_image",
]
