"""Run an exported model in onnxruntime on one image and draw the result.

    python tools/onnx_infer.py work_dirs/ssdlite.onnx data/tiny_coco/val2017/000000.jpg --out vis.png
"""
import argparse
import os

import cv2

from mobileone_mm.export import draw_result, load_session, read_image
from mobileone_mm.weights import atomic_file


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='.onnx file written by tools/export_onnx.py')
    parser.add_argument('image')
    parser.add_argument('--out', help='where to save the picture (e.g. vis.png)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detections shown')
    args = parser.parse_args()
    session, meta = load_session(args.model)
    image = read_image(args.image, meta['input_shape'])
    picture, lines = draw_result(image, session.run(None, {'image': image}), meta,
                                 score_thr=args.score_thr)
    print(f'{meta["task"]} on {args.image} ({meta["input_shape"][0]}x{meta["input_shape"][1]}):')
    print('\n'.join(f'  {line}' for line in lines) or '  nothing above the threshold')
    if args.out:
        encoded = cv2.imencode(os.path.splitext(args.out)[1] or '.png', picture)[1]
        with atomic_file(args.out) as f:
            f.write(encoded.tobytes())
        print(f'picture: {args.out}')


if __name__ == '__main__':
    main()
