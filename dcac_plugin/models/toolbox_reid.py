"""Any model of torchreid's factory (OSNet, OSNet-AIN, ResNet, ...) as the ``baseline`` and
``dcac`` engines train it: the paper's Re-ID head on the model's own feature.

The engines need logits, the feature z and the BN feature (PCL on f_bn, eq. 6-7; the
condition from the logits, eq. 12). A torchreid model gives its feature v through its own
conventions: ``v`` in eval mode and ``classifier(v)`` in train mode with ``loss='softmax'``.
Its ``classifier`` (a Linear on v, straight after the feature) is taken off and replaced by
an identity, so that its train-mode softmax return is v itself; v then goes through the
BNNeck and a new bias-free classifier, as in the paper's recipe (section 4.1). The model's
forward is not touched, so every model whose ``classifier`` is one Linear layer works.
"""
from __future__ import annotations

import functools
from typing import Union

import torch
from torch import nn

from dcac_config.errors import ConfigError

from .reid_head import BNNeckReID


def torchreid_feature_dim(network: nn.Module, name: str) -> int:
    """The dimension of a torchreid model's feature v: its classifier's input."""
    classifier = getattr(network, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ConfigError(
            f"torchreid model {name!r} has no single linear classifier on its feature ({type(classifier).__name__} "
            "instead): engines baseline and dcac put their BNNeck and classifier on that feature. Use it with engine "
            "softmax or triplet, or choose a model such as osnet_ain_x1_0, osnet_x1_0 or resnet50.")
    return int(classifier.in_features)


class ToolboxReID(BNNeckReID):
    """A torchreid model (built with ``loss='softmax'``) + BNNeck + bias-free ID classifier.

    By torchreid's conventions the backbone returns v in eval mode, and in train mode with
    loss 'softmax' classifier(v), which is v once the classifier is an identity.

    ``backbone`` is the torchreid model with its classifier replaced by ``nn.Identity``, so
    its state-dict keys are the model's own under ``backbone.`` (its classifier aside).
    """

    def __init__(self, network: nn.Module, num_classes: int, loss: str = "softmax", name: str = "") -> None:
        feature_dim = torchreid_feature_dim(network, name or type(network).__name__)
        network.classifier = nn.Identity()
        # The train-mode softmax return is classifier(v), v now; any other return would not be v.
        network.loss = "softmax"
        super().__init__(network, feature_dim, num_classes, loss)
        self.model_name = name

    def source_line(self) -> str:
        return (f"Re-ID model: torchreid's {self.model_name or type(self.backbone).__name__}, {self.weights_source}; "
                f"BNNeck and bias-free classifier on its {self.feature_dim}-d feature")


@functools.lru_cache(maxsize=None)
def check_toolbox_model(name: str) -> None:
    """Refuse, before any data is read, a torchreid model the Re-ID head cannot go on (built
    on the meta device: no memory, no weights; once per name, as every check of a config calls it)."""
    from torchreid import models as reid_models

    with torch.device("meta"):
        network = reid_models.build_model(name=name, num_classes=2, loss="softmax", pretrained=False)
    torchreid_feature_dim(network, name)


def build_toolbox_reid(name: str, num_classes: int, loss: str = "softmax", pretrained: Union[bool, str] = True,
                       **build_kwargs) -> ToolboxReID:
    """torchreid's ``build_model(name)`` (ImageNet weights when ``pretrained``) wrapped in :class:`ToolboxReID`."""
    from torchreid import models as reid_models

    network = reid_models.build_model(name=name, num_classes=num_classes, loss="softmax", pretrained=pretrained,
                                      **build_kwargs)
    model = ToolboxReID(network, num_classes, loss, name)
    model.weights_source = ("ImageNet weights (model.pretrained True)" if pretrained
                            else "random initialisation (model.pretrained False)")
    return model
