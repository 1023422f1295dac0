"""sparsify / densify return the model; return_report=True gives the ConversionReport."""
import torch

import sparseprop
from sparseprop import SparseLinear


def test_sparsify_returns_the_model():
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    assert sparseprop.sparsify(net, 0.9) is net and isinstance(net[0], SparseLinear)
    copied = sparseprop.sparsify(torch.nn.Linear(8, 8), 0.9, inplace=False)
    assert isinstance(copied, SparseLinear)
    report = sparseprop.sparsify(torch.nn.Linear(8, 8), 0.9, return_report=True)
    assert isinstance(report, sparseprop.ConversionReport) and report.converted == [""]
    assert isinstance(report.model, SparseLinear)
    assert sparseprop.densify(net) is net and isinstance(net[0], torch.nn.Linear)


def test_no_transformers_needed_for_default_types():
    import sys

    net = torch.nn.Sequential(torch.nn.Linear(16, 16))
    saved = sys.modules.get("transformers.pytorch_utils")
    sys.modules["transformers.pytorch_utils"] = None  # as if transformers were not installed
    try:
        assert isinstance(sparseprop.sparsify(net, 0.9)[0], SparseLinear)
    finally:
        if saved is None:
            del sys.modules["transformers.pytorch_utils"]
        else:
            sys.modules["transformers.pytorch_utils"] = saved
