"""The runtimes a fused model is deployed to, one module each (``onnxruntime.py``,
``openvino.py``, ``executorch.py``, ``ncnn.py``, ``coreml.py``), all with one interface:
``NAME``, ``EXTRA``, ``PACKAGES``, ``PRECISIONS``, ``SUFFIX``, ``RUNS_HERE``,
``export(wrapper, example, out, metadata, precision, calibration) -> paths`` and
``load(path, threads) -> Runner`` (``runner(image)`` -> the raw outputs of the export
wrapper, ``runner.metadata``, ``runner.input_shape``).

The modules import their runtime's package inside their functions: ``import
mobileone_mm`` imports none of them, and a runtime that is not installed fails only when
asked for (``get_runtime``), with the extra that installs it.

    runtime = get_runtime('openvino', 'int8')     # the module, checked
    paths = export_to_runtime(config, checkpoint, 'model.xml', 'openvino')   # .export
    runner = load_runner('model.xml')             # the runtime picked by the file name
    found = run_on_photo('model.xml', 'photo.jpg', out='vis.png')   # predicted and drawn
"""

from .common import (
    PRECISIONS,
    RUNTIMES,
    Runtime,
    get_runtime,
    install_hint,
    load_runner,
    operator_error,
    run_on_photo,
    runtime_of_path,
    write_staged,
)
from .export import export_to_runtime

__all__ = [
    'PRECISIONS',
    'RUNTIMES',
    'Runtime',
    'export_to_runtime',
    'get_runtime',
    'install_hint',
    'load_runner',
    'operator_error',
    'run_on_photo',
    'runtime_of_path',
    'write_staged',
]
