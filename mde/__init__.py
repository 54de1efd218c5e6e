"""mde: monocular depth estimation from training to a depth map on a robot."""

__version__ = "0.1.0"
