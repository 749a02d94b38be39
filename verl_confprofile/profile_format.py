"""The per-dimension block format of section 4.2 / Figure 2b: render a profile, parse any text back.

    <age><evidence>...</evidence><tag>24-30</tag><score>4</score></age>

Parsing rules (the reward path depends on them never raising):
- Reasoning is not parsed: the answer is what follows the last ``</think>`` (the whole text when
  there is none), up to its first ``<think>``: a reasoning section opened after the last close
  and never closed (a truncated output) hides everything after it, wherever it is.
- A dimension is well-formed when its block opens and closes exactly once, holds exactly one
  ``<tag>`` whose text is in the dimension's closed set (aliases accepted) and exactly one
  ``<score>`` that is an integer 1..5 or a verbal level (very low .. very high). ``<evidence>``
  is optional but may appear only once. Inner tags may come in any order.
- Anything else is malformed for that dimension, with a short reason; never an exception.
Only ``str.find``/``str.count`` scans are used, so time is linear in the input size.
For speed, canonical text is read by a compiled reader first (see ProfileParser).
"""

from __future__ import annotations

import operator
from functools import lru_cache
from typing import Mapping, NamedTuple

from .taxonomy import Dimension, Taxonomy

try:
    from ._speedups import read_canonical
except ImportError:  # installed without a C compiler: the general rules read everything
    read_canonical = None

VERBAL_SCORES = {"very low": 1, "low": 2, "medium": 3, "high": 4, "very high": 5}
_SCORE_TEXT = {str(i): i for i in range(1, 6)} | VERBAL_SCORES


class DimensionOutput(NamedTuple):
    """What one text says for one dimension; ``error`` is None exactly when it is well-formed."""

    tag: str | None
    score: int | None
    evidence: str | None
    error: str | None

    @property
    def well_formed(self) -> bool:
        return self.error is None


Profile = dict[str, DimensionOutput]


def _malformed(reason: str) -> DimensionOutput:
    return DimensionOutput(None, None, None, reason)


def _unique_span(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | str:
    """(start, end) of the content between the only open/close pair, or a reason string."""
    n_open = text.count(open_tag)
    if n_open == 0:
        return "missing"
    if n_open > 1 or text.count(close_tag) > 1:
        return "duplicated"
    start = text.find(open_tag) + len(open_tag)
    end = text.find(close_tag, start)
    if end < 0:
        return "unclosed"
    return start, end


def _field(block: str, name: str) -> str | None:
    span = _unique_span(block, f"<{name}>", f"</{name}>")
    if isinstance(span, str):
        raise _FieldError(f"{name} {span}")
    return block[span[0] : span[1]]


class _FieldError(Exception):
    pass


def _parse_dimension(text: str, dim: Dimension, open_tag: str, close_tag: str) -> DimensionOutput:
    span = _unique_span(text, open_tag, close_tag)
    if isinstance(span, str):
        return _malformed(f"block {span}")
    block = text[span[0] : span[1]]
    try:
        raw_tag = _field(block, "tag")
        raw_score = _field(block, "score")
        evidence = _field(block, "evidence") if "<evidence>" in block else None
    except _FieldError as exc:
        return _malformed(str(exc))
    tag = dim.canonical(raw_tag)
    if tag is None:
        return _malformed("tag not in the closed set")
    score = _SCORE_TEXT.get(raw_score.strip())
    if score is None:
        score = _SCORE_TEXT.get(" ".join(raw_score.split()).casefold())
        if score is None:
            return _malformed("score not in 1..5")
    return DimensionOutput(tag, score, evidence.strip() if evidence is not None else None, None)


def answer_text(text: object) -> str:
    """The part of a model output that holds the answer (reasoning removed); '' for non-text."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return ""
    cut = text.rfind("</think>")
    start = 0 if cut < 0 else cut + len("</think>")
    end = text.find("<think>", start)
    return text[start:] if end < 0 else text[start:end]


class ProfileParser:
    """Parser of one taxonomy: the compiled reader of canonical blocks first, then the general rules.

    ``read_canonical`` (of the C extension ``_speedups``, built at install) takes an answer whose
    blocks come in taxonomy order, each exactly as ``render_profile`` writes it, with no other
    '<' at all, in one pass. Otherwise it reads each dimension whose block occurs once and is
    exactly canonical inside, and leaves the rest (None) to the general rules, which give the
    same result on canonical blocks (tested). Without a C compiler at install time the
    extension is missing and the general rules read everything.

    ``spec`` is what the compiled code needs of the taxonomy, built once: (DimensionOutput,
    ((key, "<key>", "</key>", {label or alias: label}), ...)).
    """

    def __init__(self, taxonomy: Taxonomy):
        self.dims = [(d, f"<{d.key}>", f"</{d.key}>") for d in taxonomy]
        self.keys = taxonomy.keys
        self.spec = (DimensionOutput, tuple((d.key, o, c, d._lookup) for d, o, c in self.dims))

    def compiled(self, text: str) -> dict[str, DimensionOutput | None] | None:
        """What the compiled reader makes of ``text`` (None per dimension it leaves to the general
        rules), or None when it is not built."""
        return read_canonical(text, self.spec) if read_canonical is not None else None

    def __call__(self, text: object) -> Profile:
        profile = (self.compiled(text) if type(text) is str else None) or dict.fromkeys(self.keys)
        if None in profile.values():
            body = answer_text(text)
            for d, o, c in self.dims:
                if profile[d.key] is None:
                    profile[d.key] = _parse_dimension(body, d, o, c)
        return profile


@lru_cache(maxsize=64)
def profile_parser(taxonomy: Taxonomy) -> ProfileParser:
    """The parser of one taxonomy, for loops that parse many texts: ``parse_profile`` without
    the look-up of the taxonomy's parser on every call."""
    return ProfileParser(taxonomy)


def parse_profile(text: object, taxonomy: Taxonomy) -> Profile:
    """Parse any model output into one DimensionOutput per taxonomy dimension. Never raises."""
    return profile_parser(taxonomy)(text)


def _clean_evidence(evidence: str) -> str:
    # Angle brackets could close or fake a block; the lookalikes keep the text readable.
    return evidence.replace("<", "\u2039").replace(">", "\u203a").strip()


def render_profile(profile: Mapping[str, tuple[str, int, str | None]], taxonomy: Taxonomy) -> str:
    """Render {dim: (tag, score, evidence)} as one block per line, in taxonomy order.

    Tags are canonicalised and must be in the closed set; scores must be 1..5. Raises ValueError
    on a bad profile, since rendering is only ever fed by our own pipeline.
    """
    lines = []
    for dim in taxonomy:
        if dim.key not in profile:
            raise ValueError(f"profile has no value for dimension {dim.key!r}")
        tag, score, evidence = profile[dim.key]
        label = dim.canonical(tag)
        if label is None:
            raise ValueError(f"{dim.key}: tag {tag!r} is not in the closed set")
        try:
            level = operator.index(score)
        except TypeError:
            level = 0
        if isinstance(score, bool) or not 1 <= level <= 5:
            raise ValueError(f"{dim.key}: score {score!r} is not an integer 1..5")
        lines.append(
            f"<{dim.key}><evidence>{_clean_evidence(evidence or '')}</evidence>"
            f"<tag>{label}</tag><score>{level}</score></{dim.key}>"
        )
    return "\n".join(lines)
