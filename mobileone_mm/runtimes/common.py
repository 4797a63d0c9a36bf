"""The runtimes' table and what their modules share: ``get_runtime`` (checked: known,
installed, the precision one it takes), ``runtime_of_path`` / ``load_runner`` (an
artefact by its file name), ``run_on_photo`` (an artefact on a photo, drawn:
tools/infer.py), ``write_staged`` (all of an artefact's files or none),
``operator_error`` (an operator a runtime cannot take, with its layer)."""

import importlib
import importlib.util
import os
import re
import shutil
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from ..checkpoints.io import atomic_file
from ..checkpoints.paths import plan_outputs
from ..loading.config import ExportError
from ..predict.photos import read_photo
from ..predict.prediction import draw, encode_picture, picture_extension, predict


class Runtime(NamedTuple):
    module: str  # the module implementing it (imported when used)
    extra: str  # pip install 'mobileone-mm[extra]'
    precisions: Tuple[str, ...]  # what --precision takes
    suffix: str  # the artefact's file name ending
    platform: str  # where its artefacts run
    siblings: Tuple[Tuple[str, str], ...] = ()  # (ending, what) of the files beside it


RUNTIMES = {
    'onnxruntime': Runtime(
        'mobileone_mm.runtimes.onnxruntime',
        'onnx',
        ('fp32', 'int8'),
        '.onnx',
        'x86 / ARM CPUs (Linux, Windows, macOS)',
    ),
    'openvino': Runtime(
        'mobileone_mm.runtimes.openvino',
        'openvino',
        ('fp32', 'int8'),
        '.xml',
        'Intel / AMD x86 CPUs, Intel GPUs and NPUs',
        (('.bin', 'weights'),),
    ),
    'executorch': Runtime(
        'mobileone_mm.runtimes.executorch',
        'executorch',
        ('fp32', 'int8'),
        '.pte',
        'Android / iOS (XNNPACK on ARM CPUs)',
    ),
    'ncnn': Runtime(
        'mobileone_mm.runtimes.ncnn',
        'ncnn',
        ('fp32',),
        '.ncnn.param',
        'Android / ARM boards (ARM CPUs, Vulkan GPUs)',
        (('.ncnn.bin', 'weights'), ('.ncnn.param.json', 'metadata sidecar')),
    ),
    'coreml': Runtime(
        'mobileone_mm.runtimes.coreml',
        'coreml',
        ('fp32', 'fp16'),
        '.mlpackage',
        'iPhone / iPad / Mac (Apple Neural Engine, GPU, CPU)',
    ),
}
PRECISIONS = ('fp32', 'fp16', 'int8')


def install_hint(name: str) -> str:
    return f"pip install 'mobileone-mm[{RUNTIMES[name].extra}]'"


def get_runtime(name: str, precision: str = 'fp32'):
    """The module of runtime ``name``, its package(s) installed and ``precision`` one it
    takes; else ExportError in one line: the valid runtimes or precisions, or the extra
    to install."""
    if name not in RUNTIMES:
        raise ExportError(f'Unknown runtime {name!r}: use one of {", ".join(RUNTIMES)}.')
    entry = RUNTIMES[name]
    if precision not in entry.precisions:
        raise ExportError(
            f'The {name} runtime takes precision {" or ".join(entry.precisions)}'
            f', not {precision!r}.'
        )
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as error:
        if error.name != entry.module:
            raise
        raise ExportError(
            f'The {name} runtime is not part of this version of mobileone-mm '
            f'(no module {entry.module}): update it.'
        ) from None
    missing = [package for package in module.PACKAGES if importlib.util.find_spec(package) is None]
    if missing:
        raise ExportError(
            f'The {name} runtime is not installed (no {", ".join(missing)}): {install_hint(name)}'
        )
    return module


def artefact_files(out: str, runtime: str) -> Dict[str, str]:
    """Every file of ``runtime``'s artefact ``out`` (ending in its suffix), by what it is:
    '{runtime} model' ``out``, then its siblings (an IR's weights ``X.bin``, ...)."""
    entry = RUNTIMES[runtime]
    stem = os.fspath(out)[: -len(entry.suffix)]
    return {
        f'{runtime} model': os.fspath(out),
        **{f'{runtime} {what}': stem + ending for ending, what in entry.siblings},
    }


def runtime_of_path(path: str) -> str:
    """The runtime whose artefacts end like ``path`` (.onnx, .xml, .pte, .ncnn.param,
    .mlpackage), else ExportError listing the endings."""
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    matches = [runtime for runtime, entry in RUNTIMES.items() if name.endswith(entry.suffix)]
    if not matches:
        raise ExportError(
            f'{os.fspath(path)!r} is not an artefact of a runtime this project '
            f'exports to: the file name must end in '
            + ', '.join(f'{e.suffix} ({r})' for r, e in RUNTIMES.items())
            + '.'
        )
    return matches[0]


def load_runner(path: str, runtime: Optional[str] = None, threads: Optional[int] = None):
    """The Runner of an exported artefact of ``runtime`` (default: picked by the file name,
    ``runtime_of_path``); ExportError for a runtime that does not run on this system or
    is not installed, PathError / PredictError for a file that is not such an artefact."""
    name = runtime or runtime_of_path(path)
    module = get_runtime(name, RUNTIMES[name].precisions[0])
    if not module.RUNS_HERE:
        raise ExportError(
            f'{os.fspath(path)!r} is a {name} artefact: it runs only on '
            f'{RUNTIMES[name].platform}, not here.'
        )
    return module.load(os.fspath(path), threads)


def run_on_photo(
    model: str,
    photo: str,
    out: Optional[str] = None,
    runtime: Optional[str] = None,
    score_thr: float = 0.3,
    what: str = 'model',
) -> dict:
    """tools/infer.py: the exported ``model`` (``load_runner``; ``what`` names it in
    messages) on the ``photo`` as the codebase's inferencer would run it
    (``predict.predict``), and the result drawn on the photo (``predict.draw``:
    detections above ``score_thr``); with ``out``, the picture is written there
    atomically, in the format its extension names, planned before any work (never over
    an input or a file our tools did not write).

    Returns task, classes_source (where the class names came from), photo_size and
    input_size (W, H: the photo's and the network's), notes (the artefact's and the
    frame's), lines (the result in words, in the photo's pixels)."""
    plan_outputs(inputs={what: model, 'photo': photo}, outputs={'picture': out})
    if out:
        picture_extension(out)
    runner = load_runner(model, runtime)
    meta = runner.metadata
    image = read_photo(photo)
    prediction = predict(runner, meta, image)
    picture, lines = draw(image, prediction, meta.get('classes') or [], score_thr=score_thr)
    if out:
        with atomic_file(out) as f:
            f.write(encode_picture(picture, out))
    frame = prediction.frame
    return dict(
        task=meta['task'],
        classes_source=meta.get('classes_source')
        or (
            'the graph metadata (source not recorded)'
            if meta.get('classes')
            else 'none, class numbers shown'
        ),
        photo_size=frame.photo_size,
        input_size=frame.input_size,
        notes=list(meta.get('notes') or []) + frame.notes,
        lines=lines,
    )


def write_staged(out: str, write: Callable[[str], object]) -> List[str]:
    """All the files of an artefact or none: ``write(path)`` writes the artefact as
    ``path`` (and whatever it puts beside it: an IR's .bin, a sidecar .json, a
    .mlpackage folder) in a temp folder beside ``out``; when it returns, each of them is
    renamed to the same name beside ``out`` (a folder replacing an older one). An error
    leaves nothing. Returns the paths written, ``out`` first."""
    out = os.path.abspath(os.fspath(out))
    directory = os.path.dirname(out)
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f'.{os.path.basename(out)}.tmp-', dir=directory
    ) as stage:
        write(os.path.join(stage, os.path.basename(out)))
        names = sorted(os.listdir(stage), key=lambda n: n != os.path.basename(out))
        moved = []
        try:
            for name in names:
                target = os.path.join(directory, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    os.rename(target, os.path.join(stage, f'.old-{name}'))
                os.replace(os.path.join(stage, name), target)
                moved.append(target)
        except BaseException:
            for target in moved:
                shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
            raise
    return moved


def operator_error(
    runtime: str, operator: str, wrapper=None, example=None, detail: str = ''
) -> ExportError:
    """The ExportError of an operator ``runtime`` cannot take, naming the layer of
    ``wrapper`` that runs it (found by running ``wrapper`` on ``example`` and recording
    which module calls an aten operator of that name)."""
    layer = layer_running(operator, wrapper, example) if wrapper is not None else None
    where = f' in layer {layer!r}' if layer else ''
    detail = f' ({detail})' if detail else ''
    return ExportError(
        f'The {runtime} runtime cannot take the operator {operator}{where}'
        f'{detail}: replace that layer, or export to another runtime.'
    )


def layer_running(operator: str, wrapper, example) -> Optional[str]:
    """The name (in ``wrapper``) of the innermost module whose forward calls the aten
    operator ``operator`` ('aten::grid_sampler', 'GridSample' ... matched by name without
    the namespace, case and underscores), None when none does."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    key = lambda name: re.sub(r'[^a-z0-9]', '', name.split('::')[-1].split('.')[-1].lower())  # noqa: E731
    wanted = key(operator)
    names = {module: name for name, module in wrapper.named_modules()}
    stack, found = [], []

    def enter(module, _):
        stack.append(names[module])

    def leave(*_):
        stack.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in names] + [
        m.register_forward_hook(leave) for m in names
    ]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = key(func.__name__.split('.')[0])
            if not found and stack and op.startswith(wanted):
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Watch():
            wrapper(example)
    except Exception:  # noqa: BLE001 (the layer stays unnamed; the operator is named)
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None
