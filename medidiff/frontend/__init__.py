"""The real-scan front end, shared by train, calibrate, score, synthesize and the baselines.

A whole-head scan straight from a scanner goes through, in order:

1. :mod:`.brain` — brain extraction (deepbet for head MRI, HU rules for head CT, or nothing
   for inputs that are already skull-stripped);
2. :mod:`.bias` — N4 bias-field correction inside the brain (MRI);
3. :mod:`.register` — rigid + affine registration to the MNI152 template (:mod:`.template`);
4. :mod:`.qc` — brain volume, registration similarity and grid coverage checks.

:func:`run_frontend` returns the pieces; :func:`medidiff.preprocess.preprocess` composes them
into the one resampling onto the model grid (template space) and back.
"""

from .config import FrontEndConfig
from .qc import QCFailed
from .run import FrontEndResult, frontend_memo, run_frontend
from .template import Template, load_template, template_grid_affine

__all__ = ["FrontEndConfig", "FrontEndResult", "QCFailed", "Template", "frontend_memo", "load_template",
           "run_frontend", "template_grid_affine"]
