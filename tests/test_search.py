"""The BM25 search index: ranking, persistence, and its edge cases."""

import pytest

from envgym.tools.search import Document, SearchIndex

DOCS = [
    Document("zarvex", "Zarvex Corp", "Zarvex Corp is a shipping company founded by Ilda Moravec."),
    Document("ilda", "Ilda Moravec", "Ilda Moravec is a pilot born in Quellport."),
    Document("quellport", "Quellport", "Quellport is a city in Orvania."),
    Document("orvania", "Orvania", "Orvania is a country. Its capital is Quellport."),
]


@pytest.fixture(scope="module")
def index():
    return SearchIndex.build(DOCS)


def test_best_match_first(index):
    hits = index.search("who was born in Quellport", k=3)
    assert hits[0].doc_id == "ilda"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score > 0 for h in hits)
    assert index.search("Zarvex", k=1)[0] == ("zarvex", pytest.approx(index.search("Zarvex")[0].score),
                                              "Zarvex Corp", DOCS[0].text)


def test_unknown_words_and_large_k(index):
    assert index.search("xylophone quasar") == []
    assert len(index.search("Quellport", k=100)) == 3  # only documents that match, however large k is


def test_save_and_load_give_the_same_results(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = SearchIndex.load(tmp_path / "idx")
    for query in ("Quellport", "shipping company", "pilot"):
        assert loaded.search(query, k=4) == index.search(query, k=4)
    assert loaded.get("orvania") == DOCS[3] and loaded.get("nope") is None


def test_errors(index, tmp_path):
    with pytest.raises(ValueError, match="unique"):
        SearchIndex.build([DOCS[0], DOCS[0]])
    with pytest.raises(ValueError, match="no documents"):
        SearchIndex.build([])
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)
    with pytest.raises(FileNotFoundError, match="no search index"):
        SearchIndex.load(tmp_path)
