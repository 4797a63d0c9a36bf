"""Run an exported model (any runtime that runs here: .onnx, OpenVINO .xml, ExecuTorch
.pte, ncnn .ncnn.param) on one photo and draw the result, as the codebase's inferencer
would run the model: the config's test pipeline, boxes and label maps in the photo's own
pixels, the picture at the photo's size. The runtime is picked by the file name.

    python tools/infer.py work_dirs/ssdlite.xml data/tiny_coco/val2017/000000.jpg --out vis.png
"""

from typing import Optional

from argtypes import score_threshold

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.runtimes import run_on_photo


def run(argv=None, runtime: Optional[str] = None, what: str = 'model', doc: str = __doc__):
    """The CLI; tools/onnx_infer.py is this with runtime 'onnxruntime'."""
    parser = tool_parser(doc)
    parser.add_argument('model', help='artefact written by tools/export.py')
    parser.add_argument('image', help='photo (any format OpenCV reads)')
    parser.add_argument('--out', help='where to save the picture (.png, .jpg, ...)')
    parser.add_argument(
        '--score-thr', type=score_threshold, default=0.3, help='detections shown (0..1)'
    )
    args = parser.parse_args(argv)
    found = run_on_photo(
        args.model, args.image, args.out, runtime=runtime, score_thr=args.score_thr, what=what
    )
    (photo_w, photo_h), (input_w, input_h) = found['photo_size'], found['input_size']
    print(f'class names: {found["classes_source"]}')
    print(
        f'{found["task"]} on {args.image} ({photo_w}x{photo_h}, network input '
        f"{input_w}x{input_h}; results in the photo's pixels):"
    )
    for note in found['notes']:
        print(f'  note: {note}')
    print('\n'.join(f'  {line}' for line in found['lines']) or '  nothing above the threshold')
    if args.out:
        print(f'picture: {args.out}')


@run_tool
def main(argv=None):
    run(argv)


if __name__ == '__main__':
    main()
