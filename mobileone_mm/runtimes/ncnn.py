"""ncnn (Tencent's mobile inference library) through pnnx: the fused model as an
``X.ncnn.param`` (the layers, text) and ``X.ncnn.bin`` (float32 weights) pair, and its
metadata in a sidecar ``X.ncnn.param.json`` (ncnn's param file has no metadata slot).

pnnx traces the export wrapper (``mobileone_mm.runtimes.wrappers.WRAPPERS``) with TorchScript
and maps every op to an ncnn layer. Three ops of the wrappers have no ncnn layer, so
pnnx gets ``NcnnGraph``, the same function in ops ncnn has:

* the BGR->RGB swap ``img[:, [2, 1, 0]]`` (a gather) as three channel slices and a concat;
* the detector's box clipping (mmdet's ``delta2bbox`` clamps strided slices in place) as
  one clamp and a minimum with (W, H, W, H), as the point coder's clipping already is;
* the segmentor's ``labels`` (argmax: no pnnx conversion) are left to the runner, which
  takes them from the logits in numpy (``Runner.__call__``).

ncnn drops the batch dimension: the runner runs a batch image by image and puts it back.
Its float16 storage and arithmetic (on by default where the CPU has them) are turned off:
the artefact is checked, and run, as float32.

Precision: fp32 only. ncnn quantizes to int8 with its C++ tools ``ncnn2table`` and
``ncnn2int8``, which the ncnn and pnnx wheels do not ship (the Python package has no
quantizer); OpenVINO, ExecuTorch and onnxruntime cover int8.
"""

import copy
import json
import os
import subprocess
import tempfile
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints.paths import atomic_files, check_extension, check_input_file
from ..loading.config import ExportError

NAME = 'ncnn'
EXTRA = 'ncnn'
PACKAGES = ('ncnn', 'pnnx')
PRECISIONS = ('fp32',)
SUFFIX = '.ncnn.param'
RUNS_HERE = True

INPUT_BLOB = 'in0'  # pnnx's names: in0, in1 ... for inputs, out0, out1 ... for outputs
LABELS_FROM_LOGITS = 'labels'  # an output the runner computes: argmax of the logits


def weights_path(param: str) -> str:
    """``X.ncnn.param`` -> ``X.ncnn.bin``."""
    return param[: -len('.param')] + '.bin'


def sidecar_path(param: str) -> str:
    return param + '.json'


class ChannelSlicesNormalize(nn.Module):
    """``runtimes.wrappers.Normalize`` with the channel order as slices and a concat (ncnn has
    no gather): the same values, bit for bit."""

    def __init__(self, normalize: nn.Module):
        super().__init__()
        self.channel_order = list(normalize.channel_order)
        self.register_buffer('mean', normalize.mean.clone())
        self.register_buffer('std', normalize.std.clone())

    def forward(self, img):
        img = torch.cat([img[:, c : c + 1] for c in self.channel_order], 1)
        return (img - self.mean) / self.std


class NcnnGraph(nn.Module):
    """A copy of an export wrapper in ops ncnn has (module docstring); its outputs are
    ``output_names``, the wrapper's without ``labels``."""

    def __init__(self, wrapper: nn.Module):
        super().__init__()
        self.wrapper = copy.deepcopy(wrapper)
        self.wrapper.normalize = ChannelSlicesNormalize(wrapper.normalize)
        coder = getattr(getattr(self.wrapper.model, 'bbox_head', None), 'bbox_coder', None)
        self.clip_boxes = bool(getattr(coder, 'clip_border', False))
        if self.clip_boxes:  # clipped below, in ops ncnn has
            coder.clip_border = False
        self.output_names = [n for n in wrapper.output_names if n != LABELS_FROM_LOGITS]

    def forward(self, img):
        outputs = self.wrapper(img)
        outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        if self.clip_boxes:  # boxes, scores
            outputs[0] = torch.min(outputs[0].clamp(min=0), self.wrapper.max_xyxy)
        return tuple(outputs[: len(self.output_names)])


def unsupported_layers(param_text: str) -> List[Tuple[str, str]]:
    """(layer type, layer name) of every layer in an ncnn param text that ncnn has no
    implementation of (pnnx leaves an op it cannot map under its own name, e.g.
    ``torch.argmax``)."""
    import ncnn

    found = []
    for line in param_text.splitlines()[2:]:  # magic number, then layer and blob counts
        fields = line.split()
        if len(fields) >= 2 and ncnn.layer_to_index(fields[0]) < 0:
            found.append((fields[0], fields[1]))
    return found


def _module_of(traced: torch.jit.ScriptModule, op: str) -> str:
    """The path, in the export wrapper, of the module whose forward ran ``op`` (pnnx's
    name: ``torch.argmax``, ``Tensor.index``, ``aten::erfinv``), from the TorchScript
    trace's scopes; '' when not found."""
    kind = op if op.startswith('aten::') else 'aten::' + op.split('.')[-1]
    for node in traced.inlined_graph.nodes():
        if node.kind() == kind:
            scope = node.scopeName().split('/')[-1].replace('__module.', '')
            return scope.split('.', 1)[1] if '.' in scope else 'the wrapper itself'
    return ''


def unsupported_message(missing: List[Tuple[str, str]], traced) -> str:
    """One line: the runtime, each operator ncnn has no layer for, its layer in the
    converted graph and the model's module that ran it."""
    parts = []
    for kind, layer in missing:
        where = _module_of(traced, kind)
        parts.append(f'{kind} (layer {layer}' + (f', module {where})' if where else ')'))
    return (
        f'ncnn cannot run operator {"; ".join(parts)}: ncnn has no such layer. Replace '
        f'it in the model, or export to another runtime (onnxruntime, openvino).'
    )


def _pnnx(traced_path: str, shape, work: str) -> str:
    """Run pnnx's converter on a TorchScript file (float32 weights); its output, and
    ExportError when it fails."""
    import pnnx

    shape_arg = '[' + ','.join(str(int(s)) for s in shape) + ']f32'
    done = subprocess.run(
        [pnnx.EXEC_PATH, traced_path, f'inputshape={shape_arg}', 'device=cpu', 'fp16=0'],
        cwd=work,
        capture_output=True,
        text=True,
    )
    log = done.stdout + done.stderr
    if done.returncode != 0:
        tail = ' | '.join(log.strip().splitlines()[-3:])
        raise ExportError(
            f'ncnn: pnnx could not convert the model (exit status {done.returncode}): {tail}'
        )
    return log


def export(
    wrapper: nn.Module,
    example: torch.Tensor,
    out: str,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> List[str]:
    """Write ``out`` (``X.ncnn.param``), ``X.ncnn.bin`` and the sidecar
    ``X.ncnn.param.json`` (metadata, blob names), all or none; returns their paths. See
    the runtime interface (mobileone_mm/runtimes) and this module's docstring."""
    if precision not in PRECISIONS:
        raise ValueError(
            f'ncnn exports precision {", ".join(PRECISIONS)}, not {precision!r} '
            f"(int8 needs ncnn's C++ tools ncnn2table / ncnn2int8, not shipped "
            f'in its Python package): use --precision fp32, or another runtime '
            f'for int8.'
        )
    out = check_extension(out, [SUFFIX], 'ncnn artefact')
    graph = NcnnGraph(wrapper).eval()
    with tempfile.TemporaryDirectory(prefix='mobileone-ncnn-') as work:
        traced_path = os.path.join(work, 'model.pt')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TracerWarnings of shape checks: sizes are fixed
            traced = torch.jit.trace(graph, (example,))
            shapes = [list(t.shape) for t in graph(example)]
        traced.save(traced_path)
        log = _pnnx(traced_path, example.shape, work)
        param_file = os.path.join(work, 'model.ncnn.param')
        if not os.path.isfile(param_file):
            raise ExportError(
                f'ncnn: pnnx wrote no ncnn model: {" | ".join(log.strip().splitlines()[-3:])}'
            )
        with open(param_file) as f:
            param = f.read()
        missing = unsupported_layers(param)
        if missing:
            raise ExportError(unsupported_message(missing, traced))
        sidecar = {
            'input_shape': list(example.shape[2:]),
            **metadata,
            'runtime': NAME,
            'precision': precision,
            'outputs': list(wrapper.output_names),
            'ncnn_blobs': dict(
                input=INPUT_BLOB,
                outputs={
                    name: dict(blob=f'out{i}', shape=shape)
                    for i, (name, shape) in enumerate(zip(graph.output_names, shapes))
                },
            ),
        }
        paths = [out, weights_path(out), sidecar_path(out)]
        with atomic_files([(paths[0], 'w'), (paths[1], 'wb'), (paths[2], 'w')]) as files:
            files[0].write(param)
            with open(os.path.join(work, 'model.ncnn.bin'), 'rb') as f:
                files[1].write(f.read())
            json.dump(sidecar, files[2], indent=1)
    return paths


class Runner:
    """An ncnn artefact on this CPU, float32 throughout (fp16 storage / arithmetic off)."""

    def __init__(self, path: str, threads: Optional[int] = None):
        import ncnn

        path = check_input_file(path, 'ncnn param file')
        with open(check_input_file(sidecar_path(path), 'ncnn metadata sidecar')) as f:
            self.metadata = json.load(f)
        shape = self.metadata.get('input_shape')
        self.input_shape = tuple(shape) if shape and not self.metadata.get('dynamic') else None
        self.output_names = self.metadata['outputs']
        self.blobs = self.metadata['ncnn_blobs']
        self.net = ncnn.Net()
        options = self.net.opt
        options.use_fp16_packed = options.use_fp16_storage = False
        options.use_fp16_arithmetic = False
        if threads:
            options.num_threads = int(threads)
        if (
            self.net.load_param(path) != 0
            or self.net.load_model(check_input_file(weights_path(path), 'ncnn weights')) != 0
        ):
            raise ExportError(
                f'ncnn could not load {path!r} and its .bin: written by '
                f'another ncnn version, or damaged? Export it again.'
            )

    def _run_one(self, image: np.ndarray) -> dict:
        import ncnn

        outputs = {}
        # ncnn.Mat(array) borrows the array's memory without holding a reference to it:
        # the contiguous copy (of a strided image: predict's HWC -> CHW transpose) must
        # stay alive until the outputs are extracted, or ncnn reads freed memory
        pixels = np.ascontiguousarray(image)
        with self.net.create_extractor() as extractor:
            extractor.input(self.blobs['input'], ncnn.Mat(pixels))
            for name, blob in self.blobs['outputs'].items():
                status, mat = extractor.extract(blob['blob'])
                if status != 0:
                    raise RuntimeError(
                        f'ncnn failed to compute {name} (blob {blob["blob"]}, status {status}).'
                    )
                # ncnn keeps no batch dimension (and no other leading 1s): the shape
                # the exported model gave
                outputs[name] = np.array(mat).reshape(blob['shape'])
        if LABELS_FROM_LOGITS in self.output_names:
            outputs[LABELS_FROM_LOGITS] = outputs['logits'].argmax(1)
        return outputs

    def __call__(self, image: np.ndarray) -> List[np.ndarray]:
        image = np.asarray(image, np.float32)
        if (
            image.ndim != 4
            or image.shape[1] != 3
            or (self.input_shape and tuple(image.shape[2:]) != self.input_shape)
        ):
            size = (
                'H, W' if self.input_shape is None else ', '.join(str(s) for s in self.input_shape)
            )
            raise ValueError(
                f'This ncnn model takes (N, 3, {size}) float32 BGR images; got '
                f'shape {image.shape}: resize the image to the input shape.'
            )
        runs = [self._run_one(one) for one in image]
        return [np.concatenate([run[name] for run in runs]) for name in self.output_names]


def load(path: str, threads: Optional[int] = None) -> Runner:
    return Runner(path, threads)
