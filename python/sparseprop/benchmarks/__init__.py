"""Benchmarks of sparseprop: dense PyTorch layers against their sparse twins.

Run them with ``python -m sparseprop.bench`` (``--help``; ``--conv``, ``--resnet18``,
``--overhead``). Nothing is imported here, so importing one module (e.g. the ResNet
builders) does not load the others. One job per module:

* :mod:`.cli`: the command lines (argument parsing, defaults, ``main``);
* :mod:`.settings`: threads and ISA for a run, restored afterwards;
* :mod:`.output`: the header every table starts with, CSV files;
* :mod:`.passes`: forward / backward / forward+backward of a layer pair, timed with
  the package's one timer (:mod:`sparseprop._timing`), and their speedups;
* :mod:`.checks`: dense vs sparse agreement, checked before timing;
* :mod:`.linear`, :mod:`.plot`: the ``nn.Linear`` vs ``SparseLinear`` table and its plot;
* :mod:`.conv_layers`, :mod:`.conv`: the convolution layers and their table;
* :mod:`.overhead`: per-call overhead of a small layer at batch 1;
* :mod:`.resnet_models`: the CIFAR ResNet-18 and ``sparsify_convs``;
* :mod:`.resnet`, :mod:`.resnet_profile`, :mod:`.resnet_rss`, :mod:`.resnet_gmp`: one
  training step, where its time goes, peak memory, pruning from dense.
"""
