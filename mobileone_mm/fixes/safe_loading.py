"""Safe checkpoint loading for mmengine on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7's local
checkpoint loader passes nothing, so ``load_from``, ``--resume``, ``mim test --checkpoint``
and ``init_cfg=Pretrained`` on an mmengine training checkpoint fail with
``UnpicklingError`` (HistoryBuffer, numpy arrays and dtypes in its message hub). Importing
this module (a config lists it in ``custom_imports``; ``import mobileone_mm`` alone does
not) registers ``checkpoints.io.load_checkpoint_file`` for mmengine's local and http(s)
schemes: ``weights_only=True`` with an allow-list of the few types mmengine writes, so a
checkpoint that asks for anything else is refused and never run. docs/stack.md has the
details.
"""

from mmengine.runner import CheckpointLoader

from ..checkpoints.io import load_checkpoint


# mmengine logs "Loads checkpoint by {loader name[10:]} backend": local / http.
def load_from_local(filename: str, map_location=None) -> dict:
    return load_checkpoint(filename, map_location or 'cpu')


def load_from_http(url: str, map_location=None) -> dict:
    return load_checkpoint(url, map_location or 'cpu')


def register_safe_checkpoint_loader():
    """Route mmengine's local and http(s) checkpoint loading through the safe loader."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True
    )


register_safe_checkpoint_loader()
