"""Same weights, same numbers: mmpretrain's and timm's MobileOne against ours."""

import pytest
import torch

from mobileone_mm import MobileOne, check_arch, convert_state_dict, reparameterize_model
from mobileone_mm.checkpoints.formats import backbone_state_dict

ARCHS = ['s0', 's1', 's2', 's3', 's4']
# S0 (four conv branches) and S4 (SE) run in the fast set too: a developer running the
# quick tests sees a wrong branch or SE gate; the other archs run with the slow set.
FAST_ARCHS = ('s0', 's4')
PEER_ARCHS = [
    arch if arch in FAST_ARCHS else pytest.param(arch, marks=pytest.mark.slow) for arch in ARCHS
]


@pytest.mark.parametrize('arch', PEER_ARCHS)
def test_mmpretrain_state_dict_loads_strictly_and_matches(arch, randomize_bn, rel_error):
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne

    peer = randomize_bn(MMPretrainMobileOne(arch, out_indices=(0, 1, 2, 3)))
    peer.eval()  # mmpretrain's train() returns None
    ours = MobileOne(arch, out_indices=(0, 1, 2, 3)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, 160, 128)
    with torch.no_grad():
        for expected, actual in zip(peer(x), ours(x)):
            assert rel_error(actual, expected) <= 1e-6
        # deploy form: mmpretrain fuses its model, ours loads that state dict strictly
        peer.switch_to_deploy()
        fused = MobileOne(arch, out_indices=(0, 1, 2, 3), deploy=True).eval()
        fused.load_state_dict(peer.state_dict(), strict=True)
        for expected, actual in zip(peer(x), fused(x)):
            assert rel_error(actual, expected) <= 1e-6


def _timm_pair(arch, randomize_bn):
    """A timm MobileOne with random weights and our classifier loaded from its state dict."""
    import timm
    from mmengine.registry import init_default_scope
    from mmpretrain.models import build_classifier

    init_default_scope('mmpretrain')  # another test's Runner may have left 'mmengine'
    peer = randomize_bn(timm.create_model(f'mobileone_{arch}', pretrained=False)).eval()
    converted, fmt = convert_state_dict(peer.state_dict())
    assert fmt == 'timm'
    ours = build_classifier(
        dict(
            type='ImageClassifier',
            backbone=dict(type='mobileone_mm.MobileOne', arch=arch),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead', num_classes=1000, in_channels=MobileOne(arch).out_channels[-1]
            ),
        )
    ).eval()
    ours.load_state_dict(converted, strict=True)
    return peer, ours


@pytest.mark.parametrize('arch', PEER_ARCHS)
def test_timm_weights_give_same_logits(arch, randomize_bn, rel_error):
    import timm.utils

    peer, ours = _timm_pair(arch, randomize_bn)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_error(ours(x, mode='tensor'), peer(x)) <= 1e-5
        # fused: timm fuses itself, we convert its fused state dict
        peer = timm.utils.reparameterize_model(peer)
        converted, _ = convert_state_dict(peer.state_dict())
        check_arch(backbone_state_dict(converted), MobileOne(arch).arch)
        fused = MobileOne(arch, deploy=True).eval()
        fused.load_state_dict(backbone_state_dict(converted), strict=True)
        reparameterize_model(ours)
        assert ours.backbone.state_dict().keys() == fused.state_dict().keys()
        expected = peer(x)
        assert rel_error(ours(x, mode='tensor'), expected) <= 1e-5
        ours.backbone = fused
        assert rel_error(ours(x, mode='tensor'), expected) <= 1e-5


def test_timm_keys_map_one_to_one():
    import timm

    peer = timm.create_model('mobileone_s4', pretrained=False)
    converted, _ = convert_state_dict(peer.state_dict())
    ours = MobileOne('s4').state_dict()
    assert set(backbone_state_dict(converted)) == set(ours)
    assert set(converted) - {f'backbone.{k}' for k in ours} == {'head.fc.weight', 'head.fc.bias'}
