"""CPU benchmark: our MobileOne against timm's, mmpretrain's and mmdet's MobileNetV2,
whole SSDLite / RTMDet / DeepLabV3 models, SSDLite from a photo to boxes, every deploy
runtime, a training step, and the machine's fp32 peak.

Everything runs in one process, on the same inputs, interleaved (``measure_interleaved``:
each round calls every model of a group once), with the thread count stated. Latency is
the median of the rounds after warm-up, with the 10th / 90th percentiles; compute is
``count_macs`` (multiply-adds of convs and linears), achieved GFLOP/s = 2 x MACs / time,
shown against the measured fp32 peak (``peak_gflops``: the best of large GEMMs and
convolutions of MKL, oneDNN and onnxruntime). The CPU model and its int8 / bf16
instruction sets head the report. ``run_benchmark`` returns a JSON-able dict;
``write_report`` writes it as JSON, a markdown table and a PNG plot; ``run_and_report``
does both, for tools/benchmark.py. Weights are random (nothing is downloaded): latency does not
depend on them; the output checks use realistic BN statistics.

One module per job: ``machine`` (CPU, versions, load, fp32 peak), ``models`` (what is
timed), ``stacked`` (the training form with stacked branches), ``runtimes`` (every deploy
runtime's artefacts and their table), ``measure`` (timing each section,
``run_benchmark``), ``targets`` (the speed targets), ``report`` (tables, plot).
"""

from .machine import INT8_BF16_FLAGS, cpu_info, describe_isa, load_average, peak_gflops
from .measure import ARCHS, PRESETS, run_and_report, run_benchmark
from .report import to_markdown, write_report
from .stacked import stacked_sum, with_stacked_branches
from .targets import evaluate_targets

__all__ = [
    'ARCHS',
    'INT8_BF16_FLAGS',
    'PRESETS',
    'cpu_info',
    'describe_isa',
    'evaluate_targets',
    'load_average',
    'peak_gflops',
    'run_and_report',
    'run_benchmark',
    'stacked_sum',
    'to_markdown',
    'with_stacked_branches',
    'write_report',
]
