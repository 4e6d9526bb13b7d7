"""Thin MONAI Label glue for anatomark: task config, infer/train tasks, datastore, strategy and scoring.

Importing this package imports ``monailabel`` (never ``monailabel.transform.post``: torchvision is not needed).
"""

from __future__ import annotations

from anatomark.monailabel.activelearning import LandmarkMRE, LowestConfidence
from anatomark.monailabel.config import LandmarkTaskConfig
from anatomark.monailabel.datastore import LandmarkDatastore
from anatomark.monailabel.infer import LandmarkInferTask
from anatomark.monailabel.published import PublishedModel
from anatomark.monailabel.train import LandmarkTrainTask

__all__ = [
    "LandmarkDatastore",
    "LandmarkInferTask",
    "LandmarkMRE",
    "LandmarkTaskConfig",
    "LandmarkTrainTask",
    "LowestConfidence",
    "PublishedModel",
]
