"""medidiff: unsupervised anomaly detection in 3D MRI/CT with MONAI diffusion models.

Data flow, one subpackage per stage:
``io`` (discover → load Volume → write back) → ``preprocess`` (invertible) →
``model`` / ``train`` → ``score`` (reconstruct, maps, calibrate) → ``evaluate`` → ``report``.
"""

from .version import __version__

__all__ = ["__version__"]
