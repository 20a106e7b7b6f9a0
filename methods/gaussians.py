"""Class-conditional Gaussian statistics shared by Mahalanobis and RMDS (NumPy only: an outputs-only evaluator that
imports it imports no PyTorch)."""
from __future__ import annotations

import numpy as np


def class_means(h: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the classes present, each sample's class index, the per-class mean of ``h``): the Gaussians' centres."""
    classes, index = np.unique(labels, return_inverse=True)
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
    means = np.zeros((len(classes), h.shape[1]))
    np.add.at(means, index, h)
    return classes, index, means / counts[:, None]
