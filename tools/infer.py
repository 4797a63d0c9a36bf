"""Run an exported model (any runtime that runs here: .onnx, OpenVINO .xml, ExecuTorch
.pte, ncnn .ncnn.param) on one photo and draw the result, as the codebase's inferencer
would run the model: the config's test pipeline, boxes and label maps in the photo's own
pixels, the picture at the photo's size. The runtime is picked by the file name.

    python tools/infer.py work_dirs/ssdlite.xml data/tiny_coco/val2017/000000.jpg --out vis.png
"""

from typing import Optional

from argtypes import score_threshold

from mobileone_mm.checkpoints.io import atomic_file
from mobileone_mm.checkpoints.paths import plan_outputs
from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.predict.photos import read_photo
from mobileone_mm.predict.prediction import draw, encode_picture, picture_extension, predict
from mobileone_mm.runtimes import load_runner


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
    plan_outputs(inputs={what: args.model, 'photo': args.image}, outputs={'picture': args.out})
    if args.out:
        picture_extension(args.out)
    runner = load_runner(args.model, runtime)
    meta = runner.metadata
    photo = read_photo(args.image)
    prediction = predict(runner, meta, photo)
    picture, lines = draw(photo, prediction, meta.get('classes') or [], score_thr=args.score_thr)
    frame = prediction.frame
    print(
        'class names: '
        + (
            meta.get('classes_source')
            or (
                'the graph metadata (source not recorded)'
                if meta.get('classes')
                else 'none, class numbers shown'
            )
        )
    )
    print(
        f'{meta["task"]} on {args.image} ({frame.photo_size[0]}x{frame.photo_size[1]}, '
        f'network input {frame.input_size[0]}x{frame.input_size[1]}; results in the '
        f"photo's pixels):"
    )
    for note in list(meta.get('notes') or []) + frame.notes:
        print(f'  note: {note}')
    print('\n'.join(f'  {line}' for line in lines) or '  nothing above the threshold')
    if args.out:
        with atomic_file(args.out) as f:
            f.write(encode_picture(picture, args.out))
        print(f'picture: {args.out}')


@run_tool
def main(argv=None):
    run(argv)


if __name__ == '__main__':
    main()
