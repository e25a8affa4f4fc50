"""Stage 2, decode: files in, fixed-size uint8 working images (or failure records) out.

The stage callable is :func:`decode_files`; :mod:`.jpeg` (libjpeg-turbo straight
from the bytes), :mod:`.blocks` (the working image estimated from a JPEG's block
means) and :mod:`.pillow` (every other format) are its helpers. Torch-free.
"""

from .files import DecodePlan, Known, decode_file, decode_files, decode_path

__all__ = ["DecodePlan", "Known", "decode_file", "decode_files", "decode_path"]
