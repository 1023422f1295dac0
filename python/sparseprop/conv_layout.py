"""Deprecated: the CHWN layout helpers and LayoutBatchNorm2d moved into the ``sparseprop.conv``
package (``sparseprop.conv.chwn``, ``sparseprop.conv.batchnorm``; all re-exported by
``sparseprop.conv``). This module re-exports them for old imports and pickles."""
from __future__ import annotations

import warnings

from .conv.batchnorm import LayoutBatchNorm2d, layout_resident_batchnorms, plain_batchnorms
from .conv.chwn import (chwn_data, chwn_output, chwn_view, from_phases_chwn, is_chwn, padded_chwn,
                        phases_chwn, subsample_chwn, to_chwn)

warnings.warn("sparseprop.conv_layout is deprecated, import from sparseprop.conv instead "
              "(LayoutBatchNorm2d, layout_resident_batchnorms, is_chwn, to_chwn, ...)",
              DeprecationWarning, stacklevel=2)

__all__ = ["LayoutBatchNorm2d", "is_chwn", "chwn_view", "layout_resident_batchnorms"]
# Also importable from here, as before: the other CHWN helpers.
_ALSO = (plain_batchnorms, chwn_data, chwn_output, from_phases_chwn, padded_chwn, phases_chwn,
         subsample_chwn, to_chwn)
