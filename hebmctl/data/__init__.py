"""Data-set readers: IDX (MNIST, Fashion-MNIST, built-in demo), CIFAR-10, image folders/zips, npz.

``load_split(spec, split)`` returns an ``ImageSet`` of uint8 ``[N, H, W, C]`` images;
``to_unit_range`` / ``from_unit_range`` convert to and from the models' float ``[N, C, H, W]``
tensors in [-1, 1].
"""

from hebmctl.data.imageset import ImageSet
from hebmctl.data.readers import load_split
from hebmctl.data.specs import parse_spec
from hebmctl.data.transforms import from_unit_range, to_unit_range
from hebmctl.errors import DataError

__all__ = ["DataError", "ImageSet", "from_unit_range", "load_split", "parse_spec", "to_unit_range"]
