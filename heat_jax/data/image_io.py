"""Reading one user image file as uint8 RGB: the one decoder of folder datasets and predict.

`read_rgb(path)` decodes with PIL and returns an [H, W, 3] uint8 array:

  * EXIF orientation is applied (a phone photo comes out the way it is shown; TFDS's
    own JPEG decoding ignores EXIF, see README);
  * grayscale, grayscale + alpha, palette, RGBA and CMYK become RGB (alpha dropped);
    16-bit images (PNG `I;16`, `I`) are scaled to 8 bits (>> 8), not clipped at 255;
  * an image of more than `MAX_PIXELS` pixels (PIL's decompression-bomb limit) is
    refused before it is decoded; truncated or otherwise undecodable files fail too.

Every failure is a DataError with one line naming the file (`check_readable` gives the
reason without raising, for whole folders at load time).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from heat_jax.errors import DataError

# PIL's own default (~89.5 M pixels, e.g. 9459 x 9459): beyond it PIL only warns.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# What PIL raises for a file it cannot decode (DecompressionBombError is no OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                 Image.DecompressionBombWarning, EOFError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class TooLarge(ValueError):
  """An image with more pixels than MAX_PIXELS."""


def _check_size(im: Image.Image) -> None:
  w, h = im.size
  if w * h > MAX_PIXELS:
    raise TooLarge(f"{w} x {h} = {w * h:,} pixels, more than the limit of {MAX_PIXELS:,} "
                   "(a decompression bomb?); shrink the image")


def _to_rgb(im: Image.Image) -> np.ndarray:
  if im.mode in _SIXTEEN_BIT:
    gray = np.asarray(im, np.int64)
    gray = np.clip(gray >> 8, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if im.mode == "P" and "transparency" in im.info:
    im = im.convert("RGBA")   # the palette's transparency, then dropped like any alpha
  return np.asarray(im.convert("RGB"))


def _open(path: str) -> Image.Image:
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    return Image.open(path)


def read_rgb(path: str) -> np.ndarray:
  """The image at `path` as uint8 [H, W, 3] (see the module docstring); DataError if not."""
  try:
    with _open(path) as im:
      _check_size(im)
      with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = ImageOps.exif_transpose(im) or im
        image = _to_rgb(im)
  except (TooLarge, *DECODE_ERRORS) as e:
    raise DataError(f"cannot read image {path}: {_reason(e)}; remove or replace the "
                    "file") from None
  return image


def check_readable(path: str) -> Optional[str]:
  """None if the image decodes within the limits, else why not (one line)."""
  try:
    with _open(path) as im:
      _check_size(im)
      im.draft("RGB", (1, 1))   # JPEG: decode at 1/8 scale; still reads every byte
      im.load()
  except (TooLarge, *DECODE_ERRORS) as e:
    return _reason(e)
  return None


def _reason(e: BaseException) -> str:
  if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
    return f"more pixels than the limit of {MAX_PIXELS:,} (a decompression bomb?)"
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__
