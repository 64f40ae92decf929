"""``GET /openapi.json``: the OpenAPI 3.1 document of every HTTP route of the gateway.

The document is data (``openapi.yaml``, shipped inside the package); :func:`load_document` adds
what holds for every answer (the ``x-request-id`` header), and :func:`setup_openapi` turns it
into JSON once, when the app is built, so that a request only sends bytes it already has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from importlib import metadata, resources
from typing import Any

import orjson
import yaml
from aiohttp import web

DOCUMENT_FILE = "openapi.yaml"
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_REQUEST_ID_HEADER = {"$ref": "#/components/headers/RequestId"}
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe loader that refuses a mapping with a key twice (YAML would keep the last one
    silently: two schemas of one name, one hiding the other)."""


def _unique_mapping(loader: Any, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = Counter(
        key.value
        for key, _ in node.value
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge"
    )
    repeated = sorted(str(key) for key, count in keys.items() if count > 1)
    if repeated:
        raise yaml.constructor.ConstructorError(
            None, None, f"{DOCUMENT_FILE} repeats the key(s) {repeated}", node.start_mark
        )
    return dict(loader.construct_mapping(node, deep=True))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_document() -> dict[str, Any]:
    """The document as a dict, version from the installed package, every answer with its
    ``x-request-id`` header."""
    text = resources.files("cic_gateway").joinpath(DOCUMENT_FILE).read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    document["info"]["version"] = metadata.version("cic-gateway")
    for response in _responses(document):
        # A copy: YAML aliases share one mapping between several answers.
        response["headers"] = {"x-request-id": _REQUEST_ID_HEADER, **response.get("headers", {})}
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(path, METHOD, operation)`` for every operation the document describes."""
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method.upper(), item[method]


def _responses(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every response object written out in the document (references to shared ones skipped:
    those are in ``components.responses``)."""
    for _, _, operation in operations(document):
        for response in operation["responses"].values():
            if "$ref" not in response:
                yield response
    yield from document["components"]["responses"].values()


def setup_openapi(app: web.Application) -> None:
    app[OPENAPI_DOCUMENT] = orjson.dumps(load_document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")
