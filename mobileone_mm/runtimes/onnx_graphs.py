"""ONNX graphs of the fused wrappers and the onnxruntime side of them: the export (opset
17, the metadata every graph carries, our mark), sessions, and an exported graph read back
with its metadata checked against the graph. Below every runtime that starts from an ONNX
graph (onnxruntime fp32 and int8, OpenVINO).
"""

import io
import json
import os
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..checkpoints.io import atomic_file
from ..checkpoints.marks import ONNX_MARK
from ..checkpoints.paths import check_extension, check_input_file, plan_outputs
from ..predict.photos import PredictError
from ..predict.prediction import DETECTION_KEYS, TASK_OUTPUTS, _graph_dims
from .wrappers import DenseDetectorForExport, count_conv_calls, export_metadata_of, wrap_for_export


def export_onnx(
    model: nn.Module,
    path: str,
    input_shape: Sequence[int] = (320, 320),
    dynamic: bool = False,
    metadata: Dict[str, object] = None,
) -> dict:
    """Fuse ``model`` in place (if needed) and export it to ``path`` (written atomically).

    ``dynamic`` makes the batch size (and, for classifiers and segmentors, the image
    size) free. Returns what was exported: task, output names, conv counts of the fused
    PyTorch model and of the graph (equal: no branch is left), metadata. ``path`` is
    checked first (checkpoints.paths.plan_outputs: a new file or one our tools wrote).
    """
    check_extension(path, ['.onnx'], 'ONNX output')
    plan_outputs(outputs={'ONNX model': path})
    graph, info = build_onnx(model, input_shape, dynamic, metadata)
    with atomic_file(path) as f:
        f.write(graph)
    return dict(info, path=path)


def build_onnx(
    model: nn.Module,
    input_shape: Sequence[int] = (320, 320),
    dynamic: bool = False,
    metadata: Dict[str, object] = None,
) -> Tuple[bytes, dict]:
    """``export_onnx`` without writing: (the serialized graph, what was exported), so that
    a caller can check the graph (``verify_onnx`` takes the bytes) before writing it."""
    wrapper, example = wrap_for_export(model, input_shape)
    meta = export_metadata_of(wrapper, dynamic, metadata)
    graph = onnx_graph(wrapper, example, meta, dynamic)
    return graph.SerializeToString(), dict(
        task=meta['task'],
        outputs=wrapper.output_names,
        metadata=meta,
        torch_convs=count_conv_calls(wrapper, example),
        onnx_convs=sum(node.op_type == 'Conv' for node in graph.graph.node),
    )


def onnx_graph(wrapper: nn.Module, example: torch.Tensor, meta: dict, dynamic: bool = False):
    """The wrapper traced on ``example`` as an ONNX ModelProto (opset 17, input ``image``,
    outputs ``wrapper.output_names``), ``meta`` in its metadata (JSON values); with
    ``dynamic`` the batch (and for classifiers and segmentors the image size) free."""
    import onnx

    axes = (
        {0: 'batch'}
        if isinstance(wrapper, DenseDetectorForExport)
        else {0: 'batch', 2: 'height', 3: 'width'}
    )
    dynamic_axes = (
        {'image': axes, **{name: {0: 'batch'} for name in wrapper.output_names}}
        if dynamic
        else None
    )
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=['image'],
            output_names=wrapper.output_names,
            dynamic_axes=dynamic_axes,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        if key != ONNX_MARK[0]:  # the mark, added once below
            graph.metadata_props.add(key=key, value=json.dumps(value))
    graph.metadata_props.add(key=ONNX_MARK[0], value=ONNX_MARK[1])  # ours: replaceable
    return graph


def flat_onnx(flat: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> bytes:
    """A ``FlatOutputs`` model traced on ``example`` as an ONNX graph (opset 17, input
    ``input``, outputs ``output0``...; with ``dynamic_batch`` any batch size)."""
    with torch.no_grad():
        num_outputs = len(flat(example))
    names = [f'output{i}' for i in range(num_outputs)]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks: sizes are fixed
        torch.onnx.export(
            flat,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=['input'],
            output_names=names,
            dynamic_axes=({n: {0: 'batch'} for n in ['input'] + names} if dynamic_batch else None),
        )
    return buffer.getvalue()


def make_session(model, threads: Optional[int] = None):
    """An onnxruntime CPU session for an ONNX file path or serialized model (bytes), all
    graph optimisations on; ``threads`` sets its intra-op threads (default: onnxruntime's
    choice, one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Idle workers sleep instead of spinning: spinning ones would steal the cores from
    # whatever runs next in the process (PyTorch, in the benchmark's interleaved runs).
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def load_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session (see ``make_session``) and the export metadata."""
    session = make_session(path, threads)
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    return session, meta


def check_metadata(session, meta: dict, path: str):
    """PredictError when ``meta`` is missing or disagrees with the graph: task and output
    names, input name and shape, the detection post-process settings, number of class
    names against the graph's class dimension."""
    fix = 'Export it with tools/export_onnx.py, which writes the metadata onnx_infer needs.'
    task = meta.get('task')
    if task not in TASK_OUTPUTS:
        found = f'task {task!r}' if task is not None else 'no mobileone-mm metadata'
        raise PredictError(f'The ONNX model {path!r} has {found} (task, input_shape, ...). {fix}')
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [o.name for o in outputs]
    problems = []
    if [i.name for i in inputs] != ['image'] or len(inputs[0].shape) != 4:
        problems.append(
            f'inputs {[(i.name, i.shape) for i in inputs]} (expected one 4-d input named image)'
        )
    if names != TASK_OUTPUTS[task]:
        problems.append(f'outputs {names} (a {task} graph has {TASK_OUTPUTS[task]})')
    shape = meta.get('input_shape')
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and v >= 1 for v in shape)
    ):
        problems.append(f'input_shape {shape!r} (expected [H, W])')
    elif not problems:
        dims = _graph_dims(inputs[0])
        if dims[1] not in (3, None):
            problems.append(f'an input of {dims[1]} channels (photos give 3)')
        if dims[2:] != [None, None] and dims[2:] != shape:
            problems.append(
                f'input_shape {shape} in the metadata but the graph takes {dims[2]}x{dims[3]}'
            )
    if task == 'detection':
        missing = [k for k in DETECTION_KEYS if k not in meta]
        if missing:
            problems.append(f'no {", ".join(missing)} for the detection post-process')
        elif not problems:
            anchors = _graph_dims(outputs[1])[1]
            if anchors is not None and sum(meta['level_sizes']) != anchors:
                problems.append(
                    f'level_sizes adding up to {sum(meta["level_sizes"])} '
                    f'anchors but the graph has {anchors}'
                )
    classes = meta.get('classes') or []
    if classes and not problems:
        class_dim = _graph_dims(outputs[1] if task == 'detection' else outputs[0])
        count = class_dim[2] if task == 'detection' else class_dim[1]
        if count is not None and count != len(classes):
            problems.append(f'{len(classes)} class names for {count} classes')
    if problems:
        raise PredictError(
            f'The ONNX model {path!r} does not match its metadata: {"; ".join(problems)}. {fix}'
        )


def check_external_data(path: str):
    """PredictError naming the file and where it was looked for when the ONNX model at
    ``path`` keeps tensors in external data files (onnx's save_as_external_data, needed
    above 2 GB) and one of them is missing. A file onnx cannot parse is left to
    onnxruntime's error."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable model: load_onnx says so
        return
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in graph.graph.initializer:
        if uses_external_data(tensor):
            location = os.path.join(folder, ExternalDataInfo(tensor).location)
            if not os.path.isfile(location):
                raise PredictError(
                    f'The ONNX model {path!r} keeps its weights in external data files, and '
                    f'{ExternalDataInfo(tensor).location!r} (tensor {tensor.name!r}) is '
                    f'missing: looked for {location!r}. Copy the data file next to the '
                    f'model, as it was when exported.'
                )


def load_onnx(path: str, threads: Optional[int] = None):
    """(onnxruntime session, metadata) of a graph written by tools/export_onnx.py; a
    missing or unreadable file, a PyTorch checkpoint, a foreign or inconsistent graph are
    refused with PathError / PredictError naming the file and the fix."""
    path = check_input_file(path, 'ONNX model')
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':
        raise PredictError(
            f'{path!r} is a PyTorch checkpoint, not an ONNX model: export it '
            f'first with tools/export_onnx.py CONFIG {path} OUT.onnx.'
        )
    check_external_data(path)
    try:
        session = make_session(path, threads)
    except Exception as error:  # noqa: BLE001 (onnxruntime's own exception types)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
        raise PredictError(
            f'{path!r} is not a readable ONNX model ({type(error).__name__}: '
            f'{detail}): truncated, or another kind of file. Export it '
            f'again with tools/export_onnx.py.'
        ) from None
    raw = session.get_modelmeta().custom_metadata_map
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError as error:
        raise PredictError(
            f'The ONNX model {path!r} has metadata that is not ours '
            f'({error}). Export it with tools/export_onnx.py.'
        ) from None
    check_metadata(session, meta, path)
    return session, meta
