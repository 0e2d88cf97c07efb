"""Reject JSON Schema keywords the grammar backend would silently ignore.

A keyword the compiler does not enforce would let through output that fails
validation — constrained decoding that is quietly unconstrained. These were
found by sampling masked random logits against xgrammar and validating the
results with `jsonschema`; the walk visits only schema positions, so a
property *named* `not` is fine.
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.grammar.base import GrammarError

UNSUPPORTED_KEYWORDS = frozenset({
    "not", "if", "then", "else", "contains", "minContains", "maxContains", "uniqueItems",
    "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedItems",
    "$dynamicRef", "$recursiveRef",
})  # fmt: skip

_SUBSCHEMA = ("additionalProperties", "items", "propertyNames", "unevaluatedProperties")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def load_schema(field: str, spec: str) -> Any:
    """The schema document of `spec` (JSON text); GrammarError when it is not a usable schema."""
    try:
        doc = json.loads(spec)
    except json.JSONDecodeError as e:
        raise GrammarError(field, f"the schema is not valid JSON ({e})") from None
    if not isinstance(doc, dict | bool):
        raise GrammarError(field, "the schema must be a JSON object")
    check_keywords(field, doc, "#")
    return doc


def check_keywords(field: str, schema: Any, where: str) -> None:
    """Raise GrammarError naming the first unsupported keyword found under `schema`."""
    if not isinstance(schema, dict):
        return
    for key in schema:
        if key in UNSUPPORTED_KEYWORDS:
            raise GrammarError(field, f"unsupported JSON Schema keyword {key!r} at {where}")
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) > 1:
        raise GrammarError(field, f"unsupported JSON Schema keyword 'allOf' with several "
                                  f"schemas at {where}")  # fmt: skip
    for key in _SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            check_keywords(field, schema[key], f"{where}/{key}")
    for key in _SUBSCHEMA_MAPS:
        sub = schema.get(key)
        if isinstance(sub, dict):
            for name, s in sub.items():
                check_keywords(field, s, f"{where}/{key}/{name}")
    for key in _SUBSCHEMA_LISTS:
        sub = schema.get(key)
        if isinstance(sub, list):
            for i, s in enumerate(sub):
                check_keywords(field, s, f"{where}/{key}/{i}")
