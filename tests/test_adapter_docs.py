"""The adapters' pages document the parameters the code has: names in the tables are real, the first argument
is the one the constructor takes first, and no example uses a deprecated name."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _table_names(page: str) -> list[str]:
    return re.findall(r"^\| `(\w+)`", (DOCS / page).read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_llama_index_page_documents_the_constructor_it_has():
    pytest.importorskip("llama_index.core")
    from moee_plugins.llama_index import MoEEmbedding

    text = (DOCS / "llama-index.md").read_text(encoding="utf-8")
    first = re.search(r"^\| `(\w+)` \(first argument\)", text, flags=re.MULTILINE)
    params = [p for p in inspect.signature(MoEEmbedding.__init__).parameters if p != "self"]
    assert first is not None and first.group(1) == params[0]  # what MoEEmbedding("moee:olmoe") binds to
    known = set(params) | set(MoEEmbedding.model_fields)
    assert set(_table_names("llama-index.md")) <= known
    assert "model_name=" not in "".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
