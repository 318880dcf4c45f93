"""napari-medseg: medical image segmentation and disc labeling networks in napari."""

__version__ = "0.1.0"
