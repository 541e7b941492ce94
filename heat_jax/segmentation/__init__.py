"""Semantic segmentation: metrics, loss, sliding-window inference, the decoder head.

  metrics     confusion matrix over a whole split, mIoU / pixel accuracy (mmseg's way)
  inference   whole / sliding-window inference, multi-scale + flip averaging
  head        the `seg_head` model extension: multi-scale features -> a decoder
  masks       label PNGs of a finished run (`heat_jax.predict`)
The task kind that plugs these into the engine is `heat_jax.tasks.segmentation`.
"""
