"""A local BM25 search index over a corpus of documents (bm25s).

    index = SearchIndex.build([Document("d1", "Zarvex Corp", "Zarvex Corp was founded by ...")])
    index.search("who founded zarvex", k=3)    # [Hit(doc_id, score, title, text), ...], best first
    index.save("idx/"); SearchIndex.load("idx/")
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import bm25s

_DOCS_FILE = "documents.jsonl"


class Document(NamedTuple):
    doc_id: str
    title: str
    text: str


class Hit(NamedTuple):
    doc_id: str
    score: float
    title: str
    text: str


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class SearchIndex:
    """BM25 (Lucene variant, bm25s defaults) over title + text of each document."""

    def __init__(self, retriever: bm25s.BM25, documents: Sequence[Document]):
        self._retriever = retriever
        self.documents = list(documents)
        self._by_id = {d.doc_id: d for d in self.documents}

    @classmethod
    def build(cls, documents: Iterable[Document | tuple[str, str, str]]) -> SearchIndex:
        """Index `documents` ((doc_id, title, text) each); doc ids must be unique."""
        docs = [Document(*d) for d in documents]
        if not docs:
            raise ValueError("cannot build a search index over no documents")
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"doc ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
        retriever = bm25s.BM25()
        retriever.index(_tokenize([f"{d.title}\n{d.text}" for d in docs]), show_progress=False)
        return cls(retriever, docs)

    def save(self, directory: str | Path) -> None:
        """Write the index and the documents under `directory` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._retriever.save(str(directory), show_progress=False)
        with open(directory / _DOCS_FILE, "w", encoding="utf-8") as f:
            for d in self.documents:
                f.write(json.dumps(d._asdict()) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SearchIndex:
        """The index `save` wrote under `directory`."""
        directory = Path(directory)
        if not (directory / _DOCS_FILE).exists():
            raise FileNotFoundError(f"no search index in {directory} (expected {_DOCS_FILE} written by save)")
        retriever = bm25s.BM25.load(str(directory), show_progress=False)
        with open(directory / _DOCS_FILE, encoding="utf-8") as f:
            docs = [Document(**json.loads(line)) for line in f]
        return cls(retriever, docs)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The top `k` documents for `query` with a positive score, best first (ties by index order)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        tokens = [t for t in _tokenize([query])[0] if t in self._retriever.vocab_dict]
        if not tokens:
            return []
        indices, scores = self._retriever.retrieve([tokens], k=min(k, len(self.documents)), show_progress=False)
        hits = [(int(i), float(s)) for i, s in zip(indices[0], scores[0]) if s > 0]
        return [Hit(self.documents[i].doc_id, s, self.documents[i].title, self.documents[i].text) for i, s in hits]

    def get(self, doc_id: str) -> Document | None:
        """The document with `doc_id`, or None."""
        return self._by_id.get(doc_id)

    def __len__(self) -> int:
        return len(self.documents)
