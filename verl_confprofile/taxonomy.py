"""Profile taxonomies: closed label sets per dimension, loaded from YAML.

A taxonomy is data, not code: the prompt, the parser, voting, rewards and metrics all read the
dimensions and labels from here, so a user's own YAML with other dimensions works end to end.
Label order matters: it is the last tie-break of voting ("earlier in taxonomy order").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import IO, Iterator

import yaml

DEFAULT_TAXONOMY = "profilebench"
_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Block names the output format already uses: a dimension named after one could never be parsed.
_RESERVED_KEYS = ("evidence", "tag", "score", "think")
_DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-"})
_TIGHT_MARKS = ("-", "/", ",")  # no space around these in a folded label
# Spellings of "unknown" a model or annotator writes; all mean the dimension's NA label (unless
# the taxonomy has a label of that spelling: a label is always itself).
_NA_ALIASES = ("na", "n/a", "n.a.", "unknown", "unknown(na)", "unknown (na)", "unknown(n/a)", "none")
_LABEL_MARKS = ("<", ">", ";")  # the answer format's tag marks, and the prompt's separator between labels
_TOP_KEYS = ("na_label", "dimensions")
_DIMENSION_KEYS = ("name", "labels", "aliases", "na_aliases")


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing a mapping that repeats a key: plain YAML keeps the last
    one, so a dimension written twice would silently replace the first."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: dict[object, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not key_node:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _parse_yaml(text: str | IO[str]) -> object:
    return yaml.load(text, Loader=_UniqueKeyLoader)


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the file and the key."""


def normalize_label(text: str) -> str:
    """Fold a label to its matching key: case, dash variants and spacing do not matter.

    Runs of whitespace become one space, and none is kept around '-', '/' and ','. Only
    single-pass string methods are used, so the cost is linear in the length of ``text``: this
    runs on every model tag that is not an exact label, and a regex such as ``\\s*-\\s*``
    rescans a run of spaces from each of its positions (quadratic in the run's length).
    """
    text = " ".join(text.translate(_DASHES).casefold().split())
    for mark in _TIGHT_MARKS:
        text = text.replace(" " + mark, mark).replace(mark + " ", mark)
    return text


@dataclass(frozen=True)
class Dimension:
    """One profile attribute with its closed label set (NA included)."""

    key: str
    name: str
    labels: tuple[str, ...]
    na: str
    _lookup: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _rank: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def canonical(self, raw: object) -> str | None:
        """The canonical label a raw tag means, or None when it is not in the set (or not a string).

        Gold labels come from user JSON, so any value may arrive here; only strings can match.
        """
        if not isinstance(raw, str):
            return None
        hit = self._lookup.get(raw)
        if hit is None:
            hit = self._lookup.get(normalize_label(raw))
        return hit

    def rank(self, label: str) -> int:
        """Position of a canonical label in taxonomy order (the final voting tie-break)."""
        return self._rank[label]


class Taxonomy:
    """An ordered set of dimensions. Iterate for dimensions, index by key."""

    def __init__(self, dimensions: list[Dimension], source: str = "<memory>"):
        self.dimensions = tuple(dimensions)
        self.source = source
        self._by_key = {d.key: d for d in self.dimensions}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._by_key)

    def __getitem__(self, key: str) -> Dimension:
        return self._by_key[key]

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __repr__(self) -> str:
        return f"Taxonomy({self.source!r}, keys={list(self.keys)})"

    def to_dict(self) -> dict:
        """The YAML structure of this taxonomy (labels and names; extra aliases are not kept)."""
        na = {d.na for d in self.dimensions}.pop()
        return {"na_label": na, "dimensions": {d.key: {"name": d.name, "labels": list(d.labels)} for d in self}}

    @classmethod
    def from_dict(cls, data: object, source: str = "<memory>") -> "Taxonomy":
        """Build and validate a taxonomy; every problem names `source` and the offending key."""
        if not isinstance(data, dict) or not isinstance(data.get("dimensions"), dict):
            raise TaxonomyError(f"{source}: expected a mapping with a 'dimensions' mapping")
        _refuse_unknown_keys(f"{source}:", data, _TOP_KEYS)
        na = data.get("na_label", "NA")
        _check_text(f"{source}: na_label", "label", na)
        if not na.strip():
            raise TaxonomyError(f"{source}: na_label: must be a non-empty string")
        if not data["dimensions"]:
            raise TaxonomyError(f"{source}: dimensions: no dimension defined")
        dims = [_build_dimension(source, key, spec, na) for key, spec in data["dimensions"].items()]
        return cls(dims, source)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Taxonomy":
        """Load a taxonomy YAML. A file that exists is read, whatever its name; otherwise a bare
        name (no folder, no .yaml/.yml) names a bundled taxonomy ('profilebench'); None loads
        the default bundled one."""
        if path is None:
            return _bundled(DEFAULT_TAXONOMY)
        if isinstance(path, str) and not os.path.isfile(path) and _is_bare_name(path):
            return _bundled(path)
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8-sig") as fh:
                data = _parse_yaml(fh)
        except OSError as exc:
            raise TaxonomyError(f"{path}: cannot read taxonomy: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise TaxonomyError(f"{path}: invalid YAML: {exc}") from exc
        return cls.from_dict(data, path)


def _is_bare_name(path: str) -> bool:
    return not any(sep and sep in path for sep in (os.sep, os.altsep)) and not path.endswith((".yaml", ".yml"))


def _refuse_unknown_keys(where: str, spec: dict, known: tuple[str, ...]) -> None:
    """A misspelt key ('alias' for 'aliases') would otherwise be ignored without a word."""
    unknown = [k for k in spec if k not in known]
    if unknown:
        raise TaxonomyError(f"{where} unknown key {unknown[0]!r} (expected {', '.join(known)})")


def _check_text(where: str, what: str, value: object) -> None:
    """A label or alias must be a string; YAML reads 2020, 1.5, yes, no, on, off, null unquoted as
    other types, so the message names the value and says to quote it."""
    if isinstance(value, str):
        return
    if isinstance(value, bool):
        kind = "a boolean (YAML reads yes, no, on, off, true and false unquoted as booleans)"
    elif value is None:
        kind = "null (YAML reads an empty entry, ~ and null unquoted as null)"
    elif isinstance(value, (int, float)):
        kind = "a number (YAML reads digits unquoted as a number)"
    else:
        kind = f"a {type(value).__name__}"
    raise TaxonomyError(f"{where}: {what} {value!r} is {kind}, not a string: write it in quotes, as in \"2020\" or \"yes\"")


def _build_dimension(source: str, key: object, spec: object, na: str) -> Dimension:
    where = f"{source}: dimensions.{key}"
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise TaxonomyError(f"{where}: key must match [a-z][a-z0-9_]* (it names an output block)")
    if key in _RESERVED_KEYS:
        raise TaxonomyError(f"{where}: key {key!r} is reserved by the output format ({', '.join(_RESERVED_KEYS)})")
    if not isinstance(spec, dict):
        raise TaxonomyError(f"{where}: expected a mapping with 'labels'")
    _refuse_unknown_keys(f"{where}:", spec, _DIMENSION_KEYS)
    labels = spec.get("labels")
    if not isinstance(labels, list) or not labels:
        raise TaxonomyError(f"{where}.labels: empty dimension (need at least one label besides {na})")
    for label in labels:
        _check_text(f"{where}.labels", "label", label)
        if not label.strip() or any(mark in label for mark in _LABEL_MARKS) or label.splitlines() != [label]:
            raise TaxonomyError(
                f"{where}.labels: label {label!r}: every label must be a non-empty string on one line, without "
                "'<' or '>' (the answer format's tags) or ';' (the prompt's separator between labels)"
            )
    if na not in labels:
        raise TaxonomyError(f"{where}.labels: missing the NA label {na!r}")
    if len(labels) < 2:
        raise TaxonomyError(f"{where}.labels: empty dimension (need at least one label besides {na})")
    lookup: dict[str, str] = {}
    for label in labels:
        folded = normalize_label(label)
        if folded in lookup:
            raise TaxonomyError(f"{where}.labels: duplicate label {label!r} (same as {lookup[folded]!r})")
        lookup[folded] = label
    lookup.update({label: label for label in labels})
    na_aliases = spec.get("na_aliases", [])
    aliases = spec.get("aliases") or {}
    if not isinstance(na_aliases, list):
        raise TaxonomyError(f"{where}.na_aliases: expected a list of strings")
    for alias in na_aliases:
        _check_text(f"{where}.na_aliases", "alias", alias)
    if not isinstance(aliases, dict) or not all(isinstance(v, list) for v in aliases.values()):
        raise TaxonomyError(f"{where}.aliases: expected a mapping of label -> list of strings")
    for label, spellings in aliases.items():
        for alias in spellings:
            _check_text(f"{where}.aliases.{label}", "alias", alias)
    for alias in _NA_ALIASES:
        lookup.setdefault(normalize_label(alias), na)
    for label, spellings in aliases.items():
        if label not in labels:
            raise TaxonomyError(f"{where}.aliases: {label!r} is not one of the labels")
    # A declared alias may not mean something else already: a label, another label's alias or
    # an NA spelling (the built-in ones included); the setdefault above would hide the clash.
    declared = [("na_aliases", alias, na) for alias in na_aliases]
    declared += [(f"aliases.{label}", alias, label) for label, spellings in aliases.items() for alias in spellings]
    for at, alias, label in declared:
        held = lookup.setdefault(normalize_label(alias), label)
        if held != label:
            raise TaxonomyError(f"{where}.{at}: alias {alias!r} already means {held!r}")
    name = spec.get("name", key.replace("_", " ").title())
    return Dimension(key, str(name), tuple(labels), na, lookup, {x: i for i, x in enumerate(labels)})


@lru_cache(maxsize=None)
def _bundled(name: str) -> Taxonomy:
    ref = resources.files("verl_confprofile.configs") / f"{name}.yaml"
    if not ref.is_file():
        raise TaxonomyError(f"{name}: no such bundled taxonomy and no such file")
    return Taxonomy.from_dict(_parse_yaml(ref.read_text(encoding="utf-8")), str(ref))
