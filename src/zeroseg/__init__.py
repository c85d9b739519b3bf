"""zeroseg: zero-shot semantic segmentation (ZS3Net/ZS5Net, ZS-MMD, ZegFormer) under one roof."""

from zeroseg.errors import ZeroSegError

__version__ = "0.1.0"
__all__ = ["ZeroSegError", "__version__"]
