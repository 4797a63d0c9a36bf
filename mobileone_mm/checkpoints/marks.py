"""The mark each kind of file our tools write carries, and how it is read back
(``written_here``): a checkpoint's ``meta['written_by']`` or safetensors header, a config's
first line, an ONNX metadata entry, a picture's text chunk or comment, a runtime
artefact's metadata slot (OpenVINO rt_info, the ExecuTorch metadata method, the ncnn
sidecar, Core ML's user metadata); the files beside an artefact are judged by it. A tool
replaces only an existing file that carries the mark (``paths.check_replaceable``).
"""

import json
import os
import re
import struct
import zlib
from typing import Union

from .io import CHECKPOINT_EXTENSIONS, WRITTEN_BY, checkpoint_written_here

# A tool replaces or deletes only files it knows it wrote, by a mark in the file that its
# format names by extension (what an output is written as follows its extension too):
CONFIG_MARK = '# written by mobileone_mm'  # first line of a config we write (.py)


ONNX_MARK = ('written_by', json.dumps(WRITTEN_BY))  # metadata entry of our ONNX graphs


PICTURE_MARK = WRITTEN_BY  # PNG tEXt 'Software', JPEG comment


def _config_marked(path: str) -> bool:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.readline().startswith(CONFIG_MARK)
    except OSError:  # unreadable: not known to be ours
        return False


def _onnx_marked(path: str) -> bool:
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception:  # not an ONNX file: not ours
        return False
    return ONNX_MARK in {(p.key, p.value) for p in graph.metadata_props}


def _picture_marked(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            info = picture.info
    except Exception:  # not a picture: not ours
        return False
    comment = info.get('comment', b'')
    return PICTURE_MARK in (
        info.get('Software'),
        comment.decode('latin-1') if isinstance(comment, bytes) else comment,
    )


# The runtimes' artefacts (mobileone_mm/runtimes) carry the mark in the metadata they
# store, ``written_by`` (METADATA_MARK), read from their own slot without the runtime:
METADATA_MARK = ('written_by', WRITTEN_BY)


EXECUTORCH_METADATA_METHOD = b'mobileone_mm_metadata'  # runtimes/executorch.py


def _marked_metadata(text) -> bool:
    """Whether ``text`` is the JSON of a dict carrying METADATA_MARK."""
    try:
        metadata = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(metadata, dict) and metadata.get(METADATA_MARK[0]) == METADATA_MARK[1]


def _openvino_marked(path: str) -> bool:
    """An OpenVINO IR's .xml: its rt_info ``mobileone_mm`` / ``metadata`` (runtimes/openvino.py)
    carries the mark (not the ``framework`` entries an IR converted from our ONNX keeps)."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError):
        return False
    slot = root.find('./rt_info/mobileone_mm/metadata')
    return root.tag == 'net' and slot is not None and _marked_metadata(slot.get('value'))


def _executorch_marked(path: str) -> bool:
    """An ExecuTorch .pte: a constant method EXECUTORCH_METADATA_METHOD whose string (a
    length-prefixed flatbuffer string in the program, read without the segments after
    it) is our marked metadata."""
    try:
        with open(path, 'rb') as f:
            head = f.read(32)
            if head[4:6] != b'ET':  # the flatbuffer's file identifier ET12
                return False
            # the extended header 'eh00': its length, the program's size, the segments' offset
            size = struct.unpack('<Q', head[16:24])[0] if head[8:12] == b'eh00' else 0
            size = min(size or os.path.getsize(path), os.path.getsize(path))
            program = head + f.read(max(size - len(head), 0))
    except OSError:
        return False
    if EXECUTORCH_METADATA_METHOD not in program:
        return False
    for start in (m.start() for m in re.finditer(rb'\{"', program) if m.start() >= 4):
        length = struct.unpack('<I', program[start - 4 : start])[0]
        if start + length <= len(program) and _marked_metadata(program[start : start + length]):
            return True
    return False


def _ncnn_sidecar_marked(path: str) -> bool:
    """An ncnn artefact's sidecar ``X.ncnn.param.json`` (runtimes/ncnn.py): our metadata."""
    try:
        with open(path, 'rb') as f:
            return _marked_metadata(f.read())
    except OSError:
        return False


def _coreml_marked(path: str) -> bool:
    """A Core ML .mlpackage folder: its root model specification (named by Manifest.json)
    holds the mark as a user-defined metadata entry, JSON-encoded as in our ONNX graphs
    (a protobuf map entry: key and value strings)."""
    key, value = METADATA_MARK[0].encode(), json.dumps(METADATA_MARK[1]).encode()
    entry = b'\n' + bytes([len(key)]) + key + b'\x12' + bytes([len(value)]) + value
    try:
        with open(os.path.join(path, 'Manifest.json'), encoding='utf-8') as f:
            manifest = json.load(f)
        root = manifest['itemInfoEntries'][manifest['rootModelIdentifier']]['path']
        with open(os.path.join(path, 'Data', root), 'rb') as f:
            return entry in f.read()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _beside(artefact_suffix: str, sibling_suffix: str):
    """The mark reader of a file written beside an artefact (an IR's weights, an ncnn
    model's weights): it is ours when the artefact of the same name beside it is."""

    def marked(path: str) -> bool:
        artefact = path[: -len(sibling_suffix)] + artefact_suffix
        return os.path.isfile(artefact) and written_here(artefact)

    return marked


# by the file name's ending, the longest that matches (.ncnn.bin before .bin):
MARK_READERS = {
    **{ext: checkpoint_written_here for ext in CHECKPOINT_EXTENSIONS},
    '.py': _config_marked,
    '.onnx': _onnx_marked,
    '.png': _picture_marked,
    '.jpg': _picture_marked,
    '.jpeg': _picture_marked,
    '.xml': _openvino_marked,
    '.bin': _beside('.xml', '.bin'),
    '.pte': _executorch_marked,
    '.ncnn.param.json': _ncnn_sidecar_marked,
    '.ncnn.param': _beside('.ncnn.param.json', '.ncnn.param'),
    '.ncnn.bin': _beside('.ncnn.param.json', '.ncnn.bin'),
    '.mlpackage': _coreml_marked,
}


FOLDER_FORMATS = ('.mlpackage',)  # outputs that are folders


def _format_of(path: str) -> str:
    """The MARK_READERS ending of ``path`` (the longest that matches), else its extension."""
    name = os.path.basename(os.path.normpath(path)).lower()
    endings = [ending for ending in MARK_READERS if name.endswith(ending)]
    return max(endings, key=len) if endings else os.path.splitext(name)[1]


def written_here(path: Union[str, os.PathLike]) -> bool:
    """Whether the existing file (or folder of a FOLDER_FORMATS format) ``path`` carries
    the mark of our tools for its format (MARK_READERS, by its ending); files of other
    endings never do."""
    path = os.fspath(path)
    reader = MARK_READERS.get(_format_of(path))
    return reader is not None and reader(path)


def mark_picture(data: bytes, ext: str) -> bytes:
    """An encoded .png / .jpg picture with our mark (PICTURE_MARK) added: a PNG tEXt
    chunk 'Software' after the header, a JPEG comment after the start marker and the
    JFIF segment. Other
    formats come back as they are (they carry no mark: an existing one is never
    replaced)."""
    ext = ext.lower()
    if ext == '.png':
        text = b'Software\0' + PICTURE_MARK.encode()
        chunk = (
            struct.pack('>I', len(text))
            + b'tEXt'
            + text
            + struct.pack('>I', zlib.crc32(b'tEXt' + text))
        )
        end_of_header = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
        return data[:end_of_header] + chunk + data[end_of_header:]
    if ext in ('.jpg', '.jpeg'):
        text = PICTURE_MARK.encode()
        start = 2  # after SOI; after the JFIF APP0 segment when there is one
        if data[2:4] == b'\xff\xe0':
            start = 4 + struct.unpack('>H', data[4:6])[0]
        return data[:start] + b'\xff\xfe' + struct.pack('>H', len(text) + 2) + text + data[start:]
    return data
