"""Data pipeline: video decoding and preprocessing, the training dataset and its collator."""
