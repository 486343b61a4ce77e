from metaft.algorithms.anil import ANIL
from metaft.algorithms.base import MetaLearner
from metaft.core.errors import NonFiniteLossError
from metaft.algorithms.feature_head import FeatureHeadLearner
from metaft.core.inner_loop import adapt
from metaft.algorithms.maml import MAML
from metaft.algorithms.metaoptnet import MetaOptNet
from metaft.algorithms.metasgd import MetaSGD
from metaft.algorithms.pretrain import Pretrain
from metaft.algorithms.protonet import ProtoNet
from metaft.algorithms.reptile import Reptile

__all__ = ["ANIL", "MAML", "FeatureHeadLearner", "MetaLearner", "MetaOptNet", "MetaSGD", "NonFiniteLossError", "Pretrain", "ProtoNet", "Reptile", "adapt"]
