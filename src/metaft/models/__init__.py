from metaft.models.nets import MLP, MetaNet

__all__ = ["MLP", "MetaNet"]
