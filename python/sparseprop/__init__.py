"""sparseprop: fast CPU training with unstructured-sparse weights.

Vectorized CSR kernels (scalar, AVX2, AVX-512, NEON; chosen at import) behind
drop-in PyTorch layers. See ``show_config()`` for the path in use.
"""
__version__ = "0.1.0"

from ._backend import (  # noqa: E402
    available_isas,
    config,
    get_isa,
    get_num_threads,
    set_isa,
    set_num_threads,
    show_config,
    use_isa,
    _apply_isa_env,
)
from ._workspace import cache_info, empty_cache, get_cache_limit, set_cache_limit  # noqa: E402
from .csr import CSRPattern  # noqa: E402
from .modules import SparseConv2d, SparseLinear  # noqa: E402
from . import functional  # noqa: E402
from .hf_conv1d import SparseConv1D  # noqa: E402
from .convert import ConversionReport, ModelSummary, densify, sparsify, summary  # noqa: E402
from .optim_state import apply_masks, update_pattern  # noqa: E402
from . import hf  # noqa: E402  (transformers itself is imported only when used)
from .checkpoint import (  # noqa: E402
    check_state_dict,
    densify_state_dict,
    load_dense_state_dict,
    read_checkpoint,
    safe_load_state_dict,
)

_apply_isa_env()

__all__ = [
    "CSRPattern",
    "ConversionReport",
    "ModelSummary",
    "apply_masks",
    "cache_info",
    "check_state_dict",
    "densify",
    "densify_state_dict",
    "empty_cache",
    "get_cache_limit",
    "load_dense_state_dict",
    "read_checkpoint",
    "safe_load_state_dict",
    "set_cache_limit",
    "sparsify",
    "summary",
    "update_pattern",
    "SparseConv1D",
    "SparseConv2d",
    "SparseLinear",
    "available_isas",
    "config",
    "functional",
    "get_isa",
    "get_num_threads",
    "set_isa",
    "set_num_threads",
    "show_config",
    "use_isa",
    "__version__",
]
