"""Video decoding and preprocessing, the supervised dataset and its collator."""
