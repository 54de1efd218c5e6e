"""Training: the report's model, datasets, augmentation, losses, CyclicLR trainer, DDP.

Importing this package imports no torch; the submodules that need it do.
"""
