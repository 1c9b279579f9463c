"""Brain-tumour MRI data: the registry of domains and releases, reading and validation, the preprocessing cache and
split, clicks, and a phantom in the BraTS layout; the grain pipeline is `sam_jax.data.pipeline` (see each module's
docstring)."""

from sam_jax.data.brats import Case, CaseFiles, check_case, find_cases, load_case, save_prediction
from sam_jax.data.cache import Cache, build_cache
from sam_jax.data.domains import DOMAINS, MODALITIES, PAPER_DOMAINS
from sam_jax.data.errors import BadCaseError, CacheError, CaseFault, DataError, SplitMismatchError
from sam_jax.data.split import load_split
