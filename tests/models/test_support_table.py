"""docs/architectures.md is generated from the architecture table and the matrix (``python docs/generate.py``;
tests/test_docs.py fails when it is stale): the matrix must cover every family and every selector."""

from architecture_cases import DYNAMIC_SELECTORS, STATIC_SELECTORS, TINY, TINY_VLM
from raylsl.models import ARCHITECTURES
from raylsl.selectors import available_selectors


def test_the_matrix_covers_every_family_and_every_selector():
    assert sorted([*TINY, *TINY_VLM]) == sorted(arch.model_type for arch in ARCHITECTURES)
    assert sorted(STATIC_SELECTORS + DYNAMIC_SELECTORS) == available_selectors()
