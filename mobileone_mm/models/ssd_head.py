"""mmdet 3.3.0's SSDHead, able to predict. Needs mmdet; configs import it through
``custom_imports=dict(imports=['mobileone_mm', 'mobileone_mm.models.ssd_head'])`` and use
``bbox_head=dict(type='mobileone_mm.SSDHead', ...)`` with SSDHead's arguments.

The bug (mmdet issues 11063, 11305, 11780; unmerged fix PR 11524): ``SSDHead`` skips
``AnchorHead.__init__``, so it has no ``loss_cls`` module (its softmax cross-entropy with
hard negative mining is written out in ``loss_by_feat_single``), but
``BaseDenseHead._predict_by_feat_single`` asks ``self.loss_cls`` whether it defines custom
class channels. Validation, ``mim test`` and inference of every SSD model then fail with
``AttributeError: 'SSDHead' object has no attribute 'loss_cls'``. Training is unaffected.
"""

from mmdet.models.dense_heads import SSDHead as MMDetSSDHead

from ..registry import MODELS


@MODELS.register_module()
class SSDHead(MMDetSSDHead):
    """mmdet's SSDHead, with the ``loss_cls`` attribute prediction reads.

    ``None`` says what is true: there is no loss module, hence no custom class channels,
    and scores are the softmax over ``num_classes + 1`` (background last), as trained.
    """

    loss_cls = None
