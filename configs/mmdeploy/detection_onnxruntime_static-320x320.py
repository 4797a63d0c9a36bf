# SSDLite-MobileOne (configs/detection/ssdlite_mobileone-s*_8xb24-600e_coco.py) to ONNX
# Runtime at a fixed 320x320 input: end2end.onnx has NMS in the graph and returns
# dets (1, N, 5: x1 y1 x2 y2 score, network-input pixels) and labels (1, N).
_base_ = ['./_base_/onnxruntime.py']

onnx_config = dict(output_names=['dets', 'labels'], input_shape=[320, 320])
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    # score_thr, the NMS IoU and max_per_img come from the model's test_cfg (mmdeploy's
    # SSD rewriter reads them there); these bound the graph's NMS: at most 200 boxes per
    # class, as many as max_per_img, so the graph keeps what mmdet's batched NMS keeps.
    post_processing=dict(
        score_threshold=0.02,
        confidence_threshold=0.005,
        iou_threshold=0.45,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=200,
        background_label_id=-1,
    ),
)
