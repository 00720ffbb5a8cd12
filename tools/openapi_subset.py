"""Cut the operations Garage P2P serves, and every component they reference, out of OpenAI's OpenAPI document.

The tests validate against ``tests/data/openai/openapi.json``, which this writes; the full document
(3.4 MB, 182 paths) stays outside the repository. Run it again when the endpoint serves more::

    python -m tools.openapi_subset OFFICIAL.json tests/data/openai/openapi.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PATHS = (
    "/chat/completions",
    "/completions",
    "/models",
    "/models/{model}",
    "/embeddings",
    "/batches",
    "/batches/{batch_id}",
    "/batches/{batch_id}/cancel",
    "/files",
    "/files/{file_id}",
    "/files/{file_id}/content",
)
"""The operations kept: what the endpoint serves now and the rest of the OpenAI surface it forwards next."""
SCHEMAS = ("ErrorResponse", "ListModelsResponse", "CreateChatCompletionStreamResponse")
"""Schemas the tests validate by name that no kept operation references directly."""


def subset(document: dict[str, Any], paths=PATHS, schemas=SCHEMAS) -> dict[str, Any]:
    """The document with only ``paths`` and the transitive closure of the components they and ``schemas`` use."""
    wanted: set[tuple[str, str]] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                kind, name = ref.removeprefix("#/components/").split("/", 1)
                if (kind, name) not in wanted:
                    wanted.add((kind, name))
                    visit(document["components"][kind][name])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    kept_paths = {path: document["paths"][path] for path in paths}
    visit(kept_paths)
    for name in schemas:
        visit({"$ref": f"#/components/schemas/{name}"})
    components: dict[str, dict[str, Any]] = {}
    for kind, name in sorted(wanted):
        components.setdefault(kind, {})[name] = document["components"][kind][name]
    keep = ("openapi", "info", "servers", "security")
    return {**{k: document[k] for k in keep if k in document}, "paths": kept_paths, "components": components}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="OpenAI's openapi.json")
    parser.add_argument("out", type=Path, help="where to write the subset")
    args = parser.parse_args()
    document = subset(json.loads(args.official.read_text()))
    args.out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"{args.out}: {len(document['paths'])} paths, {sum(map(len, document['components'].values()))} components")


if __name__ == "__main__":
    main()
