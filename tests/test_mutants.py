"""Tests written for the mutants that survived the rest of the suite (issue 17, point 4;
docs/mutation.md lists every survivor and what kills it).

Each oracle is outside the code it checks: the codebases' own data preprocessors and
post-processing for the export wrappers, torch's own BatchNorm refusal for the training
input-size check.
"""

import copy
import re

import pytest
import torch
from helpers import REPO, TINY_CONFIGS

from mobileone_mm import MobileOne
from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.runtimes.wrappers import WRAPPERS, Normalize

CONFIGS = {
    **TINY_CONFIGS,
    # the other dense heads of the export wrapper: sigmoid scores, points / 9 anchors
    'rtmdet': 'configs/detection/rtmdet_mobileone-s0_1xb8-20e_tiny-coco.py',
    'retinanet': 'configs/detection/retinanet_mobileone-s1_fpn_1x_coco.py',
}
# Non-square (H, W), so that a wrapper swapping height and width fails.
SHAPE = (64, 96)
FLOAT32_EPS = torch.finfo(torch.float32).eps


def within_float32(actual, expected, ulps=64):
    """|a - e| <= ulps float32 epsilons of max |e|: both sides computed in float32 by
    different code (ours, the codebase's), the same arithmetic in another order."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max()
    assert scale > 0
    return ((actual - expected).abs().max() / scale).item() <= ulps * FLOAT32_EPS


def bgr_images(count=1, shape=SHAPE, seed=0):
    """What cv2.imread gives, as the codebases' pipelines pack it: uint8 CHW, BGR."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, *shape), generator=gen, dtype=torch.uint8) for _ in range(count)
    ]


@pytest.fixture(scope='module')
def models():
    """models[task]: the tiny S0 model of a task, built on first use, with random weights
    and BN statistics, eval, and activations of order one (``calibrate_``): scores and
    labels that are not saturated, so a wrong input or a wrong output shows."""
    from mobileone_mm.devkit.analysis import randomize_bn

    class Models(dict):
        def __missing__(self, task):
            torch.manual_seed(0)
            cfg = load_config(str(REPO / CONFIGS[task]))
            cfg.model.backbone.init_cfg = None  # nothing can be downloaded
            model, _ = build_model(cfg)
            model.init_weights()
            self[task] = calibrate_(randomize_bn(model).eval())
            return self[task]

    return Models()


def calibrate_(model):
    """Scale each conv / linear weight, along one forward pass of a normalised image, so
    that its output has standard deviation one (random weights otherwise reach 1e10 at the
    logits, and softmax saturates to one-hot)."""

    def unit_output(layer, inputs, out):
        bias = 0 if layer.bias is None else layer.bias.view(1, -1, *[1] * (out.dim() - 2))
        scale = (out - bias).std()
        layer.weight.div_(scale)
        return (out - bias) / scale + bias

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [layer.register_forward_hook(unit_output) for layer in layers]
    try:
        with torch.no_grad():
            inputs = model.data_preprocessor(dict(inputs=bgr_images(seed=1)), False)['inputs']
            model(inputs, mode='tensor')
    finally:
        for hook in hooks:
            hook.remove()
    return model


# --------------------------------------------------------------------------------------
# Export wrappers against the codebases
# --------------------------------------------------------------------------------------
MEAN, STD = [10.0, 100.0, 200.0], [2.0, 50.0, 90.0]  # a different value per channel


@pytest.mark.parametrize('swap', [False, True], ids=['bgr', 'bgr_to_rgb'])
@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg', 'mmpretrain'])
def test_normalize_is_the_codebase_preprocessor(codebase, swap):
    """Normalize(preprocessor) on a BGR 0..255 image gives what the preprocessor itself
    gives: each codebase names its channel swap differently (mmdet bgr_to_rgb ->
    _channel_conversion, mmseg channel_conversion, mmpretrain to_rgb)."""
    if codebase == 'mmdet':
        from mmdet.models.data_preprocessors import DetDataPreprocessor

        preprocessor = DetDataPreprocessor(mean=MEAN, std=STD, bgr_to_rgb=swap)
    elif codebase == 'mmseg':
        from mmseg.models.data_preprocessor import SegDataPreProcessor

        preprocessor = SegDataPreProcessor(mean=MEAN, std=STD, bgr_to_rgb=swap)
    else:
        from mmpretrain.models.utils.data_preprocessor import ClsDataPreprocessor

        preprocessor = ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=swap)
    image = bgr_images()[0]
    expected = preprocessor(dict(inputs=[image]), False)['inputs']
    assert within_float32(Normalize(preprocessor)(image[None].float()), expected, ulps=4)


def test_classifier_wrapper_gives_mmpretrain_scores(models):
    model = models['classification']
    images = bgr_images(2)
    with torch.no_grad():
        logits = WRAPPERS['classification'](model, SHAPE)(torch.stack(images).float())
        samples = model.test_step(dict(inputs=images))
    expected = torch.stack([s.pred_score for s in samples])
    assert within_float32(logits.softmax(-1), expected)


@pytest.mark.parametrize(
    'ctr_clamp,clip_border',
    [(None, True), (2, True), (None, False)],
    ids=['plain', 'ctr_clamp', 'no_clip'],
)
def test_ssd_wrapper_gives_mmdet_boxes_and_scores(models, ctr_clamp, clip_border):
    """Every (anchor, class) pair before NMS, as mmdet's own test-time decoding gives it
    (predict_by_feat without score threshold, top-k or NMS), matched by score; also with
    the box coder's centre clamp on (DeltaXYWHBBoxCoder add_ctr_clamp) and with boxes left
    unclipped at the image border (clip_border=False)."""
    model = models['detection']
    coder = model.bbox_head.bbox_coder
    saved = coder.add_ctr_clamp, coder.ctr_clamp, coder.clip_border
    if ctr_clamp:
        coder.add_ctr_clamp, coder.ctr_clamp = True, ctr_clamp
    coder.clip_border = clip_border
    try:
        _check_dense_wrapper(model)
    finally:
        coder.add_ctr_clamp, coder.ctr_clamp, coder.clip_border = saved


@pytest.mark.parametrize(
    'task,clip_border', [('rtmdet', True), ('rtmdet', False), ('retinanet', True)]
)
def test_dense_wrapper_gives_mmdet_boxes_and_scores(models, task, clip_border):
    """The same for RTMDet (points, distance coder, sigmoid; boxes clipped at the border
    or not) and RetinaNet (9 anchors a location, delta coder, sigmoid)."""
    coder = models[task].bbox_head.bbox_coder
    saved, coder.clip_border = coder.clip_border, clip_border
    try:
        _check_dense_wrapper(models[task])
    finally:
        coder.clip_border = saved


def _check_dense_wrapper(model):
    from mmengine.config import ConfigDict

    images = bgr_images(1)
    meta = dict(img_shape=SHAPE, ori_shape=SHAPE, pad_shape=SHAPE, scale_factor=(1.0, 1.0))
    with torch.no_grad():
        boxes, scores = WRAPPERS['detection'](model, SHAPE)(torch.stack(images).float())
        inputs = model.data_preprocessor(dict(inputs=images), False)['inputs']
        cls_scores, bbox_preds = model._forward(inputs)
        (expected,) = model.bbox_head.predict_by_feat(
            cls_scores,
            bbox_preds,
            batch_img_metas=[meta],
            cfg=ConfigDict(score_thr=-1, nms_pre=10**9, min_bbox_size=-1),
            rescale=False,
            with_nms=False,
        )
    num_classes = scores.shape[-1]
    assert len(expected.scores) == boxes.shape[1] * num_classes
    for label in range(num_classes):
        mine = expected.labels == label
        want = _by_score(expected.bboxes[mine], expected.scores[mine])
        got = _by_score(boxes[0], scores[0, :, label])
        assert within_float32(got, want, ulps=256), label


def _by_score(boxes, scores):
    """(score, x1, y1, x2, y2) rows sorted by score then box: a pairing that does not
    depend on anchor order."""
    rows = torch.cat([scores[:, None], boxes], 1).double()
    for column in reversed(range(rows.shape[1])):
        rows = rows[rows[:, column].argsort(stable=True)]
    return rows


@pytest.mark.parametrize('align_corners', [False, True])
def test_segmentor_wrapper_gives_mmseg_logits_and_labels(models, align_corners):
    from mmseg.structures import SegDataSample

    model = models['segmentation']
    model.align_corners = model.decode_head.align_corners = align_corners
    images = bgr_images(1)
    meta = dict(img_shape=SHAPE, ori_shape=SHAPE, pad_shape=SHAPE, padding_size=[0, 0, 0, 0])
    try:
        with torch.no_grad():
            logits, labels = WRAPPERS['segmentation'](model, SHAPE)(torch.stack(images).float())
            (sample,) = model.test_step(
                dict(inputs=images, data_samples=[SegDataSample(metainfo=meta)])
            )
    finally:
        model.align_corners = model.decode_head.align_corners = False
    assert within_float32(logits[0], sample.seg_logits.data)
    assert torch.equal(labels[0], sample.pred_sem_seg.data[0])


# --------------------------------------------------------------------------------------
# The backbone: training input sizes, fusing on load
# --------------------------------------------------------------------------------------
TINY_ARCH = dict(
    num_blocks=[1, 1, 1, 1],
    width_factor=[0.25, 0.25, 0.25, 0.25],
    num_conv_branches=[1, 1, 1, 1],
    num_se_blocks=[0, 0, 0, 0],
)


def torch_refuses(model, x) -> bool:
    """Whether torch's own BatchNorm refuses this training batch (one value per channel),
    running the stages without MobileOne's input check."""
    try:
        for stage in model.stages:
            x = stage(x)
    except ValueError as error:
        assert 'Expected more than 1 value per channel' in str(error)
        return True
    return False


@pytest.mark.parametrize('output_stride,frozen_stages', [(32, -1), (16, -1), (32, 4)])
def test_training_size_check_refuses_what_batchnorm_would(output_stride, frozen_stages):
    """The check names the stage and the fix exactly when torch's BatchNorm would fail
    deep inside, for every batch size / height / width around the 1 x 1 boundary (height
    and width on either side of it separately: a check that mixes them up passes on
    square inputs)."""
    strides = (2, 2, 2, 2) if output_stride == 32 else (2, 2, 2, 1)
    dilations = (1, 1, 1, 1) if output_stride == 32 else (1, 1, 1, 2)
    model = MobileOne(
        TINY_ARCH, strides=strides, dilations=dilations, frozen_stages=frozen_stages
    ).train()
    seen = set()
    for n in (1, 2):
        for h in (1, output_stride // 2, output_stride, output_stride + 1):
            for w in (1, output_stride, output_stride + 1):
                x = torch.rand(n, 3, h, w)
                expected = torch_refuses(model, x)
                try:
                    model(x)
                    refused = False
                except ValueError as error:
                    assert 'sees a 1 x 1 map' in str(error)
                    refused = True
                assert refused == expected, (n, h, w)
                seen.add(expected)
    assert seen == ({False} if frozen_stages == 4 else {False, True})


def test_only_unsynchronised_training_batchnorm_counts_as_local(monkeypatch):
    """A synchronised BN in a process group computes its statistics over every process, so
    a 1 x 1 map on one of them is no reason to refuse the batch; plain BN is."""
    from mobileone_mm.models.mobileone_block import _local_batch_norm
    from mobileone_mm.models.sync_batchnorm import CPUSyncBatchNorm

    layers = [torch.nn.BatchNorm2d(4), torch.nn.SyncBatchNorm(4), CPUSyncBatchNorm(4)]
    assert [_local_batch_norm(m) for m in layers] == [True, True, True]  # no process group
    assert not any(_local_batch_norm(m.eval()) for m in layers)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    assert [_local_batch_norm(m.train()) for m in layers] == [True, False, False]
    assert not _local_batch_norm(torch.nn.ReLU())


@pytest.mark.parametrize('output_stride', [16, 8])
def test_dilated_deploy_model_fuses_train_weights_on_load(output_stride, randomize_bn):
    """A deploy=True model at output stride 16 / 8 (whose first dilated-stage block keeps
    stride 1 and no identity branch) loads train-form weights by fusing them with the
    model's own BN eps; it equals the train form (float64) to float32 rounding."""
    strides, dilations = (
        ((2, 2, 2, 1), (1, 1, 1, 2)) if output_stride == 16 else ((2, 2, 1, 1), (1, 1, 2, 4))
    )
    kwargs = dict(
        arch=TINY_ARCH,
        out_indices=(0, 1, 2, 3),
        strides=strides,
        dilations=dilations,
        norm_cfg=dict(type='BN', eps=0.1),
    )
    train = randomize_bn(MobileOne(**kwargs)).eval()
    deploy = MobileOne(deploy=True, **kwargs).eval()
    deploy.load_state_dict(train.state_dict(), strict=True)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = copy.deepcopy(train).double()(x.double())
        for a, e in zip(deploy(x), expected):
            assert ((a - e).abs().max() / e.abs().max()).item() <= 1e-5


# --------------------------------------------------------------------------------------
# Weight conversion: an incomplete state dict is refused, naming what is missing
# --------------------------------------------------------------------------------------
TINY_SE_ARCH = dict(TINY_ARCH, num_blocks=[1, 1, 2, 1], num_se_blocks=[0, 0, 1, 1])
MISSING = [  # (form, keys dropped (prefix), the message's words)
    (
        'train',
        'stage2.0.branch_conv_list.0.norm.running_',
        r'stage2\.0\.branch_conv_list\.0\.norm without running_mean, running_var',
    ),
    ('train', 'stage1.1.branch_norm.bias', r'stage1\.1\.branch_norm without bias'),
    (
        'train',
        'stage1.0.branch_scale.norm.',
        r'stage1\.0\.branch_scale\.conv without its BN \(stage1\.0\.branch_scale\.norm\)',
    ),
    ('train', 'stage3.3.se.conv1.conv.bias', r'stage3\.3\.se\.conv1\.conv without bias'),
    ('deploy', 'stage4.1.se.conv2.conv.bias', r'stage4\.1\.se\.conv2\.conv without bias'),
    ('deploy', 'stage2.1.branch_reparam.bias', r'stage2\.1\.branch_reparam without bias'),
    ('deploy', 'stage3.0.', r'stage3 without block\(s\) \[0\]\.'),
    ('train', 'stage1.0.', r'stage1 without block\(s\) \[0\]\.'),
    ('train', 'stage3.2.', r'stage3 without block\(s\) \[2\]\.'),
    ('deploy', 'stage4.', r'no stage4\.'),
]


@pytest.mark.parametrize('form,dropped,message', MISSING, ids=[m[1] for m in MISSING])
def test_incomplete_state_dict_is_refused_naming_the_part(form, dropped, message):
    from mobileone_mm import CheckpointError, convert_state_dict

    state = MobileOne(TINY_SE_ARCH, deploy=form == 'deploy').state_dict()
    convert_state_dict(dict(state))  # complete: accepted
    partial = {k: v for k, v in state.items() if not k.startswith(dropped)}
    assert len(partial) < len(state)
    with pytest.raises(CheckpointError, match=message):
        convert_state_dict(partial)


@pytest.mark.parametrize('count', [3, 4])
def test_incomplete_state_dict_names_three_parts_and_counts_the_rest(count):
    from mobileone_mm import CheckpointError, convert_state_dict

    state = MobileOne(TINY_SE_ARCH).state_dict()
    dropped = [k for k in state if k.endswith('.running_var')][:count]
    partial = {k: v for k, v in state.items() if k not in dropped}
    more = f' and {count - 3} more' if count > 3 else ''
    with pytest.raises(CheckpointError, match=rf'without running_var{more}\. Was the file'):
        convert_state_dict(partial)


def test_format_is_named_and_a_foreign_state_dict_shows_its_first_keys():
    from mobileone_mm import CheckpointError
    from mobileone_mm.checkpoints.formats import detect_format

    one = torch.zeros(1)
    assert detect_format(MobileOne(TINY_ARCH).state_dict()) == 'mmpretrain'
    assert detect_format({'module.stage0.rbr_skip.weight': one}) == 'apple'
    assert (
        detect_format(
            {'stem.conv_kxk.0.conv.weight': one, 'stages.0.0.conv_kxk.0.conv.weight': one}
        )
        == 'timm'
    )
    for half in ('stem.conv_kxk.0.conv.weight', 'stages.0.0.conv_kxk.0.conv.weight'):
        with pytest.raises(CheckpointError, match='match none of the known formats'):
            detect_format({half: one})  # timm's stem or stages alone: another model
    foreign = {f'layer{i}.weight': one for i in range(6)}
    with pytest.raises(
        CheckpointError,
        match=r'its keys \(layer0.weight, layer1.weight, '
        r'layer2.weight, layer3.weight, \.\.\.\).* '
        r'Is it the checkpoint of another model\?$',
    ):
        detect_format(foreign)
    with pytest.raises(CheckpointError, match=r'its keys \(no keys at all, \.\.\.\)'):
        detect_format({})
    for entry in ('state_dict', 'model'):  # a whole checkpoint: the fix names the entry
        with pytest.raises(CheckpointError, match=rf"pass its '{entry}' entry"):
            detect_format({entry: MobileOne(TINY_ARCH).state_dict(), 'meta': {}})


def test_numpy_values_become_the_same_tensors_and_timm_extras_are_dropped():
    import timm

    from mobileone_mm import convert_state_dict

    state = MobileOne(TINY_ARCH).state_dict()
    as_numpy = {k: v.numpy() for k, v in state.items()}
    converted, fmt = convert_state_dict(as_numpy)
    assert fmt == 'mmpretrain'
    for key, value in state.items():
        assert torch.equal(converted[f'backbone.{key}'], value), key  # dtype too
    peer = timm.create_model('mobileone_s0').state_dict()
    converted, fmt = convert_state_dict({**peer, 'final_conv.conv.weight': torch.zeros(1)})
    assert fmt == 'timm' and not any('final_conv' in k for k in converted)


def test_conversion_keeps_what_is_not_the_backbone_and_every_dtype():
    """A classifier-layout dict converts to itself; a bare backbone's extra keys keep
    their names; bfloat16 weights stay bfloat16 (no trip through numpy); a value that is
    not a tensor is refused, naming its key."""
    from mobileone_mm import CheckpointError, convert_state_dict

    state = MobileOne(TINY_ARCH).state_dict()
    head = {'head.fc.weight': torch.ones(4, 8), 'head.fc.bias': torch.zeros(4)}
    classifier = {**{f'backbone.{k}': v for k, v in state.items()}, **head}
    converted, fmt = convert_state_dict(classifier)
    assert fmt == 'mmpretrain' and converted == classifier
    converted, _ = convert_state_dict({**state, **head})
    assert converted == classifier
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    converted, _ = convert_state_dict(half)
    assert all(converted[f'backbone.{k}'].dtype == v.dtype for k, v in half.items())
    with pytest.raises(CheckpointError, match="'head.fc.weight' is a list, not a tensor"):
        convert_state_dict({**state, 'head.fc.weight': [1.0, 2.0]})


def test_pretrained_checkpoint_is_read_once_by_our_loader(tmp_path, monkeypatch):
    """init_cfg=Pretrained goes to our loader (safe loading, format conversion) only:
    mmengine's own PretrainedInit, which would read the file again with its loader, does
    not run."""
    state = MobileOne(TINY_ARCH).state_dict()
    path = tmp_path / 'backbone.pth'
    torch.save({'state_dict': state}, path)
    reads, torch_load = [], torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(f)
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting_load)
    model = MobileOne(
        TINY_ARCH,
        init_cfg=[
            dict(type='Kaiming', layer='Conv2d'),
            dict(type='Pretrained', checkpoint=str(path)),
        ],
    )
    model.init_weights()
    assert len(reads) == 1, reads
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --------------------------------------------------------------------------------------
# Squeeze-excite: widths and init as mmpretrain's SELayer
# --------------------------------------------------------------------------------------
def test_make_divisible_is_mmpretrains():
    from mmpretrain.models.utils import make_divisible as reference

    from mobileone_mm.models.mobileone_block import make_divisible

    for divisor in range(1, 17):
        for value in range(1, 400):
            assert make_divisible(value, divisor) == reference(value, divisor), (value, divisor)


@pytest.mark.parametrize('channels,ratio', [(143, 8), (107, 4), (512, 16), (176, 16), (2048, None)])
def test_squeeze_width_is_mmpretrains(channels, ratio):
    """ratio None: both defaults (2048 channels: a ratio of 17 would give 120, not 128)."""
    from mmpretrain.models.utils import SELayer

    from mobileone_mm.models.mobileone_block import SqueezeExcite

    kwargs = {} if ratio is None else dict(ratio=ratio)
    expected = SELayer(channels, **kwargs).conv1.conv.out_channels
    assert SqueezeExcite(channels, **kwargs).conv1.conv.out_channels == expected


# --------------------------------------------------------------------------------------
# Fusion on the weights' device
# --------------------------------------------------------------------------------------
def test_fusion_stays_on_the_weights_device():
    """Fusing computes where the weights are: on another device (the meta device stands
    in for a GPU on this CPU-only machine) a CPU tensor in the arithmetic is an error."""
    from mobileone_mm import reparameterize_model

    model = reparameterize_model(MobileOne(TINY_SE_ARCH).eval().to('meta'))
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert not any(hasattr(m, 'branch_conv_list') for m in model.modules())


def test_bn_without_affine_parameters_fuses_exactly(randomize_bn):
    """BN(affine=False) normalises without gamma / beta: the fused conv must too."""
    from mobileone_mm import reparameterize_model

    train = randomize_bn(
        MobileOne(TINY_SE_ARCH, norm_cfg=dict(type='BN', affine=False), out_indices=(0, 1, 2, 3))
    ).eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = copy.deepcopy(train).double()(x.double())
        for a, e in zip(reparameterize_model(train)(x), expected):
            assert ((a - e).abs().max() / e.abs().max()).item() <= 1e-5


# --------------------------------------------------------------------------------------
# Arguments: the edges of what is accepted, the documented defaults
# --------------------------------------------------------------------------------------
def test_argument_edges_defaults_and_messages():
    from mobileone_mm.models.mobileone_block import MobileOneBlock

    # -4 is stage1 counted from the end (out of range starts at -5)
    assert MobileOne(TINY_ARCH, out_indices=(-4, -1)).out_indices == [0, 3]
    for name in ('in_channels', 'out_channels', 'groups'):  # the error names the bad one
        args = {**dict(in_channels=4, out_channels=4, kernel_size=3), name: 0}
        with pytest.raises(ValueError, match=rf"\{{'{name}': 0\}} must be positive"):
            MobileOneBlock(**args)
    with pytest.raises(ValueError, match=r'got \(3, 32, 32\)\.$'):  # no in_channels hint
        MobileOne(TINY_ARCH)(torch.rand(3, 32, 32))
    blocks = [m for m in MobileOne(TINY_ARCH).modules() if isinstance(m, MobileOneBlock)]
    assert blocks and not any(block.with_cp for block in blocks)  # with_cp: default False


# --------------------------------------------------------------------------------------
# Loading into a block, the input check, init entries beside Pretrained
# --------------------------------------------------------------------------------------
def test_block_load_reports_missing_and_mismatched_keys_as_torch_does():
    """A deploy model whose checkpoint lacks one SE block's fused conv (its SE weights
    there) and a train model given a wrong-shaped BN weight: torch's own load_state_dict
    errors, naming the key (our fuse-on-load and refusal paths step aside)."""
    model = MobileOne(TINY_SE_ARCH, deploy=True)
    state = {
        k: v for k, v in model.state_dict().items() if not k.startswith('stage3.3.branch_reparam.')
    }
    assert any(k.startswith('stage3.3.se.') for k in state)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*stage3\.3\.branch_reparam\.'):
        model.load_state_dict(state)
    model = MobileOne(TINY_ARCH)
    state = model.state_dict()
    key = next(k for k in state if k.startswith('stage1.') and k.endswith('norm.weight'))
    state[key] = torch.ones(3)
    with pytest.raises(RuntimeError, match=rf'size mismatch for {re.escape(key)}'):
        model.load_state_dict(state)


def test_input_dtype_must_be_the_weights_unless_autocast_casts_it():
    model = MobileOne(TINY_ARCH).eval()
    with pytest.raises(TypeError, match='weights are torch.float32 but the input is torch.float64'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16))
    assert out[-1].dtype == torch.bfloat16


def test_init_entries_beside_pretrained_still_run(tmp_path):
    """init_cfg = [Constant on BN layers, Pretrained of a checkpoint without stage 4's BN
    weights, strict=False as such a partial checkpoint needs]: those keep the Constant
    init, the rest is the checkpoint's, and init_cfg is unchanged afterwards."""
    state = MobileOne(TINY_ARCH).state_dict()
    path = tmp_path / 'partial.pth'

    def stage4_norm(key):
        return key.startswith('stage4.') and '.norm.' in key

    torch.save({k: v for k, v in state.items() if not stage4_norm(k)}, path)
    init_cfg = [
        dict(type='Constant', val=0.5, layer='_BatchNorm'),
        dict(type='Pretrained', checkpoint=str(path), strict=False),
    ]
    model = MobileOne(TINY_ARCH, init_cfg=copy.deepcopy(init_cfg))
    model.init_weights()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not stage4_norm(k))
    weights = [v for k, v in loaded.items() if stage4_norm(k) and k.endswith('norm.weight')]
    assert weights and all((v == 0.5).all() for v in weights)
    assert model.init_cfg == init_cfg


def test_init_cfg_given_as_a_tuple_runs_like_a_list():
    model = MobileOne(TINY_ARCH, init_cfg=(dict(type='Constant', val=0.5, layer='_BatchNorm'),))
    model.init_weights()
    weights = [v for k, v in model.state_dict().items() if k.endswith('norm.weight')]
    assert weights and all((v == 0.5).all() for v in weights)


def test_in_channels_one_is_a_grey_image_and_zero_is_refused():
    model = MobileOne(TINY_ARCH, in_channels=1).eval()
    assert model(torch.zeros(1, 1, 32, 32))[-1].shape[1] == model.out_channels[-1]
    for bad in (0, -3, 2.0):
        with pytest.raises(
            ValueError, match=f'in_channels must be a positive int, got {re.escape(repr(bad))}'
        ):
            MobileOne(TINY_ARCH, in_channels=bad)


@pytest.mark.parametrize(
    'args,message',
    [
        (dict(in_channels=8, out_channels=8, dilation=0), r"\{'dilation': 0\} must be positive"),
        (
            dict(in_channels=8, out_channels=6, groups=4),
            r'groups=4 must divide in_channels=8 '
            r'and out_channels=6',
        ),
        (dict(in_channels=6, out_channels=8, groups=4), r'groups=4 must divide in_channels=6'),
    ],
    ids=['dilation-0', 'out-not-divisible', 'in-not-divisible'],
)
def test_block_arguments_are_refused_by_name(args, message):
    from mobileone_mm.models.mobileone_block import MobileOneBlock

    with pytest.raises(ValueError, match=f'MobileOneBlock: {message}'):
        MobileOneBlock(kernel_size=3, identity=False, **args)


def test_se_cfg_reaches_every_squeeze_excite():
    from mobileone_mm.models.mobileone_block import SqueezeExcite, make_divisible

    model = MobileOne(TINY_SE_ARCH, se_cfg=dict(ratio=4))
    found = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert found
    for se in found:
        channels = se.conv1.conv.in_channels
        assert se.conv1.conv.out_channels == make_divisible(channels // 4, 8)
