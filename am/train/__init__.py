"""Training of the segmentation U-Net from labelled folders and/or synthetic data (``python -m am.train``)."""
