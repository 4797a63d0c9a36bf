from setuptools import find_packages, setup

setup(
    name='mobileone-mm',
    version='0.2.0',
    description='MobileOne re-parameterizable backbone for OpenMMLab detection and '
    'segmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mobileone_mm', 'mobileone_mm.*']),
    python_requires='>=3.8',
    # What `import mobileone_mm` imports. mmcv 2.1.0 has no wheel for recent torch: it is
    # compiled from source (tools/install.sh, docs/stack.md); mmdet 3.3 / mmseg 1.2 refuse
    # mmcv >= 2.2.
    install_requires=['torch>=2.0', 'mmengine>=0.10.0,<1.0.0', 'mmcv>=2.0.0,<2.2.0', 'numpy'],
    extras_require={
        # the codebases whose configs we ship (configs/detection, segmentation, classification)
        'mmdet': ['mmdet==3.3.0'],
        'mmseg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
        'mmpretrain': ['mmpretrain==1.2.0'],
        # tools/export_onnx.py, onnx_infer.py, optimize_for_inference's fastest backend
        'onnx': ['onnx', 'onnxruntime'],
        # mmdeploy_compat / tools/mmdeploy_export.py: what mmdeploy 1.3.1 needs at run time
        # for ONNX Runtime (prettytable: its speed-test timings). mmdeploy itself goes in
        # apart, `pip install --no-deps mmdeploy==1.3.1`: its metadata pins
        # protobuf<=3.20.2, for which pip would take onnx back to 1.17 (README, "mmdeploy").
        'mmdeploy': ['aenum', 'prettytable', 'onnx', 'onnxruntime'],
        # the runtimes of tools/export.py --runtime (mobileone_mm/runtimes), pinned to the
        # versions checked with the pinned stack (issue 22); onnxruntime is the 'onnx' extra
        # openvino reads our ONNX graph; its int8 graph is onnxruntime's quantization
        'openvino': ['openvino==2026.4.1', 'onnx', 'onnxruntime'],
        'executorch': ['executorch==1.5.1', 'torchao==0.18.0'],
        'ncnn': ['ncnn==1.0.20261020', 'pnnx==20261020'],
        'coreml': ['coremltools==9.0'],
        # tools/ (tiny data sets, benchmark's peer rows) and the test suite
        'tools': ['Pillow', 'timm'],
        'tests': ['pytest', 'pytest-xdist', 'hypothesis', 'timm'],
        # mutation testing of the suite (docs/mutation.md)
        'mutation': ['mutmut==3.8.1'],
    },
    license='Apache-2.0',
)
