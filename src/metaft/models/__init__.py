from metaft.models.conv4 import Conv4
from metaft.models.nets import MLP, MetaNet
from metaft.models.resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "MetaNet", "ResNet12"]
