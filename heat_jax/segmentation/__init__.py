"""Semantic segmentation: metrics, loss, sliding-window inference, the decoder head.

  metrics     confusion matrix over a whole split, mIoU / pixel accuracy (mmseg's way)
  inference   whole / sliding-window inference, multi-scale + flip averaging
  head        the `seg_head` model extension: multi-scale features -> a decoder
"""
