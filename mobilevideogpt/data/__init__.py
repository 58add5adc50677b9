"""Video decoding, preprocessing and the QVED data utilities."""
