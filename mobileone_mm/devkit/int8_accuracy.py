"""int8 against float32 on a config's val set, per runtime: how docs/int8.md's accuracy
table is measured. Each artefact is what tools/export.py writes (``export_to_runtime``
with ``verify``: fp32 checked against the float64 train form, int8 by the int8 check),
scored by the config's own metric through the deployed path (``evaluate_artefact``).
The int8 artefacts of all runtimes come from one QDQ graph, calibrated on the same
images: what differs between them is the runtime's int8 kernels.

    python -c "from mobileone_mm.devkit.int8_accuracy import int8_accuracy as m; \\
        print(m('CONFIG', 'CKPT', 'OUT_DIR', runtimes=('onnxruntime', 'openvino')))"
"""

import os
from typing import Dict, Optional, Sequence, Tuple

from ..runtimes import RUNTIMES, export_to_runtime
from ..runtimes.evaluate import evaluate_artefact


def int8_accuracy(
    config,
    checkpoint: str,
    out_dir: str,
    runtimes: Sequence[str] = ('onnxruntime', 'openvino'),
    shape: Optional[Sequence[int]] = None,
    calib_images: int = 32,
    threads: Optional[int] = 1,
) -> Dict[Tuple[str, str], dict]:
    """{(runtime, precision): the config's val metrics} of ``checkpoint`` exported to each
    of ``runtimes`` at fp32 and int8 (``out_dir``/RUNTIME_PRECISION.SUFFIX; int8
    calibrated on the first ``calib_images`` train images), at ``shape`` (H, W; default
    the config's test size), run with ``threads`` threads."""
    metrics = {}
    for runtime in runtimes:
        for precision in ('fp32', 'int8'):
            out = os.path.join(out_dir, f'{runtime}_{precision}{RUNTIMES[runtime].suffix}')
            export_to_runtime(
                config,
                checkpoint,
                out,
                runtime,
                precision,
                shape=shape,
                verify=True,
                calib_images=calib_images,
                threads=threads,
            )
            metrics[runtime, precision] = evaluate_artefact(config, out, threads=threads)
    return metrics
