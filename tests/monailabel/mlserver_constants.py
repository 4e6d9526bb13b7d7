"""Names shared by the MONAI Label server fixture and tests (a plain module: tests/monailabel is not a package,
so that it can never shadow the real ``monailabel`` package on ``sys.path``)."""

from __future__ import annotations

MODEL = "isbi2015_heatmap_unet"
LABELLED = ["151", "152", "153"]  # receive final labels in the tests
UNLABELLED = ["154", "155"]
SMALL = "small"  # a 387 x 480 PNG (W x H) with a 254 dpi resolution -> 0.1 mm/px in viewers
AUTO_TRAIN_EVERY = 3
