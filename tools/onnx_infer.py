"""Run an exported model in onnxruntime on one photo and draw the result, as the codebase's
inferencer would run the model: the config's test pipeline, boxes and label maps in the
photo's own pixels, the picture at the photo's size (tools/infer.py for .onnx files).

    python tools/onnx_infer.py work_dirs/ssdlite.onnx data/tiny_coco/val2017/000000.jpg \
        --out vis.png
"""

import infer

from mobileone_mm.errors import run_tool


@run_tool
def main(argv=None):
    infer.run(argv, runtime='onnxruntime', what='ONNX model', doc=__doc__)


if __name__ == '__main__':
    main()
