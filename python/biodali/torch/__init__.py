"""PyTorch side of biodali: ``ExpressionLoader`` streams cells from AnnData zarr stores and
annbatch collections through a DALI pipeline into dict batches of torch tensors, with DDP
sharding and exact mid-epoch resume (see ``loader.py``).

This package is named ``torch`` inside ``biodali``; its modules import the real torch with
absolute imports (``import torch``), which is what Python 3 does by default."""
from .loader import ExpressionLoader, cuda_usable
from .transforms import Log1pScale, RankTokens

__all__ = ["ExpressionLoader", "Log1pScale", "RankTokens", "cuda_usable"]
