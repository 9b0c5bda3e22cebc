"""fastsr: fast, exact training and evaluation of image super-resolution models."""

__version__ = "0.1.0"
