"""The runtime table (issue 22): every runtime of ``mobileone_mm.runtimes`` at each
precision it takes, on the MobileOne-S0 / S1 ImageNet classifiers and whole SSDLite-S0.

Each model is built from its config with random weights and realistic BN statistics,
fused and wrapped as tools/export.py exports it (``wrap_for_export``: normalisation
inside, the raw outputs named), exported by the runtime's module and loaded as its
Runner; the Runners are timed interleaved with the same model in PyTorch and, for the
classifiers, timm's and mmpretrain's fused MobileOne classifiers on the same weights
(the peers, as in the backbone table; they take the normalised image, ours the photo's
pixels). ratio = time / the faster peer's fused fp32 time (SSDLite has no peer: ours
fused in PyTorch); parity = the lowest cosine of a Runner's outputs to the PyTorch
wrapper's (fp32) on the timed input. int8 is calibrated on random images: timing only.

A runtime that is not installed, does not run on this system (Core ML) or cannot export
a model is listed with the reason instead of a time. ExecuTorch's XNNPACK and ncnn are
ARM runtimes: their x86 builds here stand in for the ARM builds a phone runs.
"""

import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .models import INT8_CALIBRATION, random_model, realistic_bn

STAND_INS = dict(
    executorch="XNNPACK's x86 kernels, a stand-in for its ARM build",
    ncnn="ncnn's x86 build, a stand-in for its ARM build",
)
PEERS = dict(timm_fused='timm fused', mmpretrain_fused='mmpretrain fused')
BASE_FORMS = dict(pytorch_fused='ours fused, PyTorch', **PEERS)
MODEL_NAMES = dict(
    classifier_s0='S0 classifier', classifier_s1='S1 classifier', ssdlite='SSDLite-S0'
)
MODEL_ARCHS = dict(classifier_s0='s0', classifier_s1='s1', ssdlite='s0')


def runtime_plan() -> Tuple[List[tuple], Dict[str, dict], Dict[str, str]]:
    """([(runtime, precision, module)] of those that run here, the runtimes' table for
    the report ({name: dict(precisions, platform)}), {'runtime precision': why not
    timed} for the others: not installed (the extra to install), or not runnable on this
    system."""
    from mobileone_mm.runtimes import RUNTIMES, get_runtime

    from ...loading.config import ExportError

    plan, skipped = [], {}
    table = {
        name: dict(precisions=list(entry.precisions), platform=entry.platform)
        for name, entry in RUNTIMES.items()
    }
    for name, entry in RUNTIMES.items():
        for precision in entry.precisions:
            try:
                module = get_runtime(name, precision)
            except ExportError as error:
                skipped[f'{name} {precision}'] = str(error)
                continue
            if module.RUNS_HERE:
                plan.append((name, precision, module))
            else:
                skipped[f'{name} {precision}'] = f'runs only on {entry.platform}: not timed here'
    return plan, table, skipped


def classifier_peers(name: str, ours: torch.nn.Module) -> Dict[str, dict]:
    """timm's and mmpretrain's fused MobileOne classifiers (ImageNet head) of the arch of
    ``name`` ('classifier_s0'); mmpretrain's with the weights of ``ours`` (train form)."""
    import timm
    import timm.utils

    from mobileone_mm import reparameterize_model

    _, peer = random_model(name, backbone_type='mmpretrain.MobileOne')
    peer.load_state_dict(ours.state_dict(), strict=True)
    timm_model = timm.create_model(f'mobileone_{name.split("_")[-1]}', pretrained=False)
    timm_model = timm.utils.reparameterize_model(realistic_bn(timm_model).eval())
    peer = reparameterize_model(peer)
    return dict(
        timm_fused=dict(fn=timm_model, module=timm_model),
        mmpretrain_fused=dict(fn=peer, module=peer),
    )


def build_runtime_models(
    name: str, size: int, plan: List[tuple], threads: int, workdir: str
) -> Tuple[Dict[str, dict], Dict[str, str], torch.Tensor]:
    """(form -> dict(fn, module, ...) for ``measure._measure``, {form: why it has no
    time}, the input to time them on: photo-like values 0..255, what the parity is
    judged on) for model ``name`` at ``size`` x ``size``: the export wrapper in PyTorch
    ('pytorch_fused'), the classifiers' peers, and each (runtime, precision) of ``plan``
    exported and loaded ('onnxruntime_int8', ...) with its cosine to the wrapper."""
    from ...loading.config import ExportError
    from ...predict.metadata import export_metadata
    from ...runtimes.int8_check import judge_int8
    from ...runtimes.wrappers import export_metadata_of, wrap_for_export

    cfg, model = random_model(name)
    models = classifier_peers(name, model) if name in ('classifier_s0', 'classifier_s1') else {}
    metadata = export_metadata(cfg, {}, model)
    wrapper, _ = wrap_for_export(model, (size, size))  # fuses the model
    meta = export_metadata_of(wrapper, metadata=metadata)
    rng = np.random.default_rng(0)
    image, *calibration = [
        rng.uniform(0, 255, (1, 3, size, size)).astype(np.float32)
        for _ in range(1 + INT8_CALIBRATION)
    ]
    with torch.no_grad():
        outputs = wrapper(torch.from_numpy(image))
    expected = [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]
    models = dict(pytorch_fused=dict(fn=wrapper, module=wrapper), **models)
    failed = {}
    for runtime, precision, module in plan:
        form = f'{runtime}_{precision}'
        path = os.path.join(workdir, f'{name}_{size}_{precision}{module.SUFFIX}')
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # TracerWarnings of shape checks
                module.export(
                    wrapper,
                    torch.from_numpy(image),
                    path,
                    dict(meta, precision=precision),
                    precision,
                    calibration,
                )
            runner = module.load(path, threads)
        except ExportError as error:  # an operator the runtime cannot take: said, not timed
            failed[form] = f'export failed: {error}'
            continue
        cosine = judge_int8([expected], [runner(image)])['cosine']
        models[form] = dict(
            fn=lambda x, runner=runner: runner(x.numpy()),
            module=wrapper,
            runtime=runtime,
            precision=precision,
            cosine=cosine,
        )
    return models, failed, torch.from_numpy(image)


def ratio_base(group: Dict[str, dict]) -> Tuple[str, float]:
    """(form, ms) a model's runtime times are divided by: the faster of timm's and
    mmpretrain's fused fp32 where the model has peers, else ours fused in PyTorch."""
    peers = [(form, group[form]['median_ms']) for form in PEERS if form in group]
    return (
        min(peers, key=lambda item: item[1])
        if peers
        else ('pytorch_fused', group['pytorch_fused']['median_ms'])
    )


def runtime_table(result: dict) -> Optional[tuple]:
    """(title, header, cells) of the runtime table, None when it was not measured: one
    row per runtime and precision (then ours in PyTorch and the peers), one column per
    model: ms (time / base, cosine to fp32), '–' where not timed, and a last column with
    where the runtime runs, or why it was not timed or could not export a model."""
    rows = [r for r in result['rows'] if r['section'] == 'runtime']
    if not rows:
        return None
    columns = list(dict.fromkeys((r['model'], r['size']) for r in rows))
    groups = {
        key: {r['form']: r for r in rows if (r['model'], r['size']) == key} for key in columns
    }
    bases = {key: ratio_base(group) for key, group in groups.items()}
    names = {key: f'{MODEL_NAMES.get(key[0], key[0])} {key[1]}x{key[1]}' for key in columns}
    runtimes = result['runtimes']
    skipped, failed = runtimes['skipped'], runtimes['failed']
    cells = []
    for name, entry in runtimes['table'].items():
        for precision in entry['precisions']:
            form = f'{name}_{precision}'
            reason = skipped.get(f'{name} {precision}')
            errors = [
                f'{names[key]}: {failed[f"{key[0]} {key[1]} {form}"]}'
                for key in columns
                if f'{key[0]} {key[1]} {form}' in failed
            ]
            note = (
                f'not timed: {reason}'
                if reason
                else '; '.join([STAND_INS.get(name, entry['platform'])] + errors)
            )
            cells.append(
                [
                    name,
                    precision,
                    *(_cell(groups[key].get(form), bases[key][1]) for key in columns),
                    note,
                ]
            )
    for form, label in BASE_FORMS.items():
        base_of = [names[key] for key in columns if bases[key][0] == form]
        cells.append(
            [
                label,
                'fp32',
                *(_cell(groups[key].get(form), bases[key][1]) for key in columns),
                f'ratio base: {", ".join(base_of)}' if base_of else '',
            ]
        )
    title = (
        'Runtimes (tools/export.py artefacts of the fused model, ms (time / base, cosine '
        "to fp32 PyTorch); base: the faster peer's fused fp32, ours in PyTorch where "
        'there is no peer; random weights and int8 calibration: timing only)'
    )
    return title, ['runtime', 'precision', *names.values(), 'runs on / note'], cells


def _cell(row: Optional[dict], base_ms: float) -> str:
    if row is None:
        return '–'
    cosine = f', cos {row["cosine"]:.6f}' if 'cosine' in row else ''
    return f'{row["median_ms"]:.1f} ({row["median_ms"] / base_ms:.2f}x{cosine})'
