"""Data: the dataset readers (folder format, NYU Depth v2, KITTI) and the procedural virtual world.

Torch-free, like the runtime: `mde.data.readers` (`open_dataset`, `dataset_max_depth`, `Sample`),
`mde.data.world` (scenes, rendering) and `mde.data.synth` (`mde data synth`). The torch
`Dataset`/`DataLoader` wrapping for training lives in `mde.train.loader`.
"""
