"""docs/architectures.md is generated from the architecture table and the matrix: it cannot drift."""

from architecture_cases import DOC, DYNAMIC_SELECTORS, STATIC_SELECTORS, TINY, TINY_VLM, support_table
from raylsl.models import ARCHITECTURES
from raylsl.selectors import available_selectors


def test_the_matrix_covers_every_family_and_every_selector():
    assert sorted([*TINY, *TINY_VLM]) == sorted(arch.model_type for arch in ARCHITECTURES)
    assert sorted(STATIC_SELECTORS + DYNAMIC_SELECTORS) == available_selectors()


def test_the_support_table_in_the_docs_is_current():
    assert DOC.read_text() == support_table(), "regenerate it: python tests/models/architecture_cases.py"
