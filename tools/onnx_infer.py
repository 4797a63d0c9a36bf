"""Run an exported model in onnxruntime on one photo and draw the result, as the codebase's
inferencer would run the model: the config's test pipeline, boxes and label maps in the
photo's own pixels, the picture at the photo's size.

    python tools/onnx_infer.py work_dirs/ssdlite.onnx data/tiny_coco/val2017/000000.jpg --out vis.png
"""
import argparse
import sys

from argtypes import score_threshold
from mobileone_mm.checkpoints.io import atomic_file
from mobileone_mm.checkpoints.paths import PathError, plan_outputs
from mobileone_mm.deploy.predict import (PredictError, draw, encode_picture, load_onnx,
                                         picture_extension, predict, read_photo)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='.onnx file written by tools/export_onnx.py')
    parser.add_argument('image', help='photo (any format OpenCV reads)')
    parser.add_argument('--out', help='where to save the picture (.png, .jpg, ...)')
    parser.add_argument('--score-thr', type=score_threshold, default=0.3,
                        help='detections shown (0..1)')
    args = parser.parse_args()
    try:
        plan_outputs(inputs={'ONNX model': args.model, 'photo': args.image},
                     outputs={'picture': args.out})
        if args.out:
            picture_extension(args.out)
        session, meta = load_onnx(args.model)
        photo = read_photo(args.image)
        prediction = predict(session, meta, photo)
    except (PathError, PredictError) as error:
        sys.exit(f'onnx_infer: {error}')
    picture, lines = draw(photo, prediction, meta.get('classes') or [],
                          score_thr=args.score_thr)
    frame = prediction.frame
    print(f'{meta["task"]} on {args.image} ({frame.photo_size[0]}x{frame.photo_size[1]}, '
          f'network input {frame.input_size[0]}x{frame.input_size[1]}; results in the '
          f"photo's pixels):")
    for note in list(meta.get('notes') or []) + frame.notes:
        print(f'  note: {note}')
    print('\n'.join(f'  {line}' for line in lines) or '  nothing above the threshold')
    if args.out:
        with atomic_file(args.out) as f:
            f.write(encode_picture(picture, args.out))
        print(f'picture: {args.out}')


if __name__ == '__main__':
    main()
