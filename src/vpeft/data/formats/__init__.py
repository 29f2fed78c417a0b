"""Dataset formats: how one part of a dataset (train, test, an evaluation set) is held on disk.

Each format lives in its own module of this package (a :class:`Source` subclass, registered on
import) and is selected by the ``format:`` key of a source block::

    train: {format: cifar100_python, root: cifar-100-python, part: train}
    train: {format: folders, root: NWPU-RESISC45}
    train: {format: list, list: clevr_dist/train.txt, root: clevr_dist}
    test:  {format: val_flat, root: /data/ILSVRC2012_img_val, devkit: /data/ILSVRC2012_devkit_t12}

=================  ===========================================================================
``folders``        class-per-folder tree (also ``wnid_folders``): RESISC45, ImageNet, -Sketch, -A/-R
``index_folders``  folders ``0`` ... ``N-1`` (ImageNet-V2)
``list``           ``<relpath> <label>`` list file (the VTAB-1K list format, Clevr-Dist)
``cifar100_python``  CIFAR-100's "python version" pickles (pixels, no image files)
``val_flat``       ImageNet's flat validation folder + devkit or Kaggle's solution csv
=================  ===========================================================================

docs/data.md, "Adding a dataset format", shows how to add one.
"""
from vpeft.data.formats.base import (FormatConfigError, Part, Source, check_block, config_keys,
                                     lookup, names, parse_source, register, source,
                                     untagged_spelling)
from vpeft.plugins import import_plugins

import_plugins(__name__, __path__, infrastructure={"base"})

__all__ = ["FormatConfigError", "Part", "Source", "check_block", "config_keys", "lookup", "names",
           "parse_source", "register", "source", "untagged_spelling"]
