from metaft.models.conv4 import Conv4
from metaft.models.nets import MLP, MetaNet

__all__ = ["MLP", "Conv4", "MetaNet"]
