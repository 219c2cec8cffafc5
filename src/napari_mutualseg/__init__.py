"""Cell segmentation from boxes by two networks that teach each other."""

__version__ = "0.1.0"
