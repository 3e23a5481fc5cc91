"""Request parsing of ``moee serve``: every field is checked here, and every refusal is an :class:`ApiError` that
names the field, the problem and the fix in OpenAI's error shape, never a 500.

Bodies are parsed by hand rather than by pydantic models so the messages say what to change; values echoed in
messages go through :func:`shown` (short, ASCII, never a deep structure or a 5,000-digit number).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENCODING_FORMATS = ("float", "base64")
JSON_MEDIA_TYPE = "application/json"
PROMPT_FIELDS = ("prompt_name", "input_type")  # TEI's and vLLM's names for the same choice


class ApiError(Exception):
    """A refusal with its HTTP status, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def encoded(self) -> bytes:
        """The body as ASCII JSON: a lone surrogate echoed back cannot break the answer."""
        return json.dumps(self.body(), ensure_ascii=True).encode("ascii")


def shown(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a client's value for a message: containers by type only, long values cut."""
    if isinstance(value, (dict, list)):
        return json_type(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a number of more than {limit} digits"
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------- bodies
def check_media_type(content_type: str | None) -> None:
    """Only ``application/json`` bodies: a form or ``text/plain`` post needs no CORS preflight, so accepting one
    would let any web page make a keyless local server compute."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        got = f"'{shown(media_type)[1:-1]}'" if media_type else "none"
        raise ApiError(415, f"the body must be sent as Content-Type: application/json (got {got})",
                       code="unsupported_media_type")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; invalid UTF-8, invalid JSON, NaN/Infinity, too-deep nesting and numbers past
    Python's digit limit are 400s."""
    if not raw:
        raise ApiError(400, "the request has no body: send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to be a request: send a flat JSON object",
                       code="invalid_json") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, digit limit, NaN
        raise ApiError(400, f"the body is not valid JSON: {shown(str(exc), 160)[1:-1]}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {json_type(body)}", code="invalid_json")
    return body


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body has {size} bytes or more; this server takes at most {limit} "
                    "(--max-request-bytes): send fewer or shorter texts per request", code="request_too_large")


# ---------------------------------------------------------------------------------------------- inputs
def _check_text(item: str, where: str, param: str) -> None:
    if not item:
        raise ApiError(400, f"'{where}' is an empty string: every input needs some text", param=param)
    if not item.isascii():
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"'{where}' holds a lone surrogate ({item[exc.start]!a}) at character "
                           f"{exc.start}: send valid Unicode text", param=param, code="invalid_text") from None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_texts(value: Any, param: str, limit: int) -> list[str]:
    """A string or a non-empty list of non-empty strings, at most ``limit`` of them (no token ids)."""
    items = parse_inputs(value, param, limit, token_ids=False)
    return [item for item in items if isinstance(item, str)]


def parse_inputs(value: Any, param: str, limit: int, *, token_ids: bool = True) -> list[str | list[int]]:
    """Texts or token ids as OpenAI's ``input`` takes them: a string, a list of strings, one list of ints, or a
    list of lists of ints. Returns one item per input: a string, or a list of token ids."""
    kind = "a string, a list of strings or token ids" if token_ids else "a string or a list of strings"
    if value is None:
        raise ApiError(400, f"'{param}' is required: {kind}", param=param, code="missing")
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise ApiError(400, f"'{param}' must be {kind}, got {json_type(value)}", param=param)
    if not value:
        raise ApiError(400, f"'{param}' must not be an empty list", param=param)
    if token_ids and all(_is_id(v) for v in value):
        value = [value]  # one input given as a single list of token ids
    if len(value) > limit:
        raise ApiError(400, f"'{param}' holds {len(value)} inputs; this server takes at most {limit} per request: "
                       "split it into several requests", param=param, code="too_many_inputs")
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(item, str):
            _check_text(item, where, param)
        elif token_ids and isinstance(item, list) and item and all(_is_id(v) for v in item):
            continue
        elif token_ids and isinstance(item, list):
            problem = "is an empty list" if not item else "must hold only integers (token ids)"
            raise ApiError(400, f"'{where}' {problem}", param=param)
        else:
            raise ApiError(400, f"'{where}' must be a string, got {json_type(item)}", param=param)
    return value


def check_token_ids(items: list[str | list[int]], vocab_size: int, param: str = "input") -> None:
    """Token ids must be the model's own: 0 <= id < its vocabulary size."""
    for i, item in enumerate(items):
        if isinstance(item, list):
            bad = next((v for v in item if not 0 <= v < vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"'{param}[{i}]' holds token id {shown(bad)}, outside this model's vocabulary "
                               f"(0 to {vocab_size - 1}): send the model's own token ids, or the text",
                               param=param, code="invalid_token_id")


# ---------------------------------------------------------------------------------------------- options
def encoding_format(body: Mapping[str, Any]) -> str:
    fmt = body.get("encoding_format")
    if fmt is None:
        return "float"
    if not isinstance(fmt, str) or fmt not in ENCODING_FORMATS:
        raise ApiError(400, f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got {shown(fmt)}",
                       param="encoding_format")
    return fmt


def flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {shown(value)}", param=name)
    return value


def positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{name}' must be a positive integer, got {shown(value)}", param=name)
    return value


def check_model(body: Mapping[str, Any], served: str) -> None:
    """``model`` may be left out; if given it must be the served name."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {json_type(model)}", param="model")
    if model != served:
        raise ApiError(404, f"model {shown(model)} is not served here; this server serves {served!r}",
                       param="model", code="model_not_found")


def prompt_name(body: Mapping[str, Any], prompts: Mapping[str, Any]) -> str | None:
    """The named prompt a request asks for with TEI's ``prompt_name`` or vLLM's ``input_type`` (None: the
    model's own template); unknown names are refused with the known ones listed."""
    given = {field: body[field] for field in PROMPT_FIELDS if body.get(field) is not None}
    if not given:
        return None
    if len(set(map(shown, given.values()))) > 1:
        raise ApiError(400, "'prompt_name' and 'input_type' name different prompts: send one of them",
                       param="prompt_name")
    field, name = next(iter(given.items()))
    if not isinstance(name, str):
        raise ApiError(400, f"'{field}' must be a string naming a prompt, got {json_type(name)}", param=field)
    if name not in prompts:
        raise ApiError(400, f"'{field}' {shown(name)} is not a prompt of this server; it knows {sorted(prompts)} "
                       "(add more with --named-prompt NAME=PROMPT)", param=field, code="unknown_prompt")
    return name


@dataclass(frozen=True)
class RerankRequest:
    """A rerank body in Cohere/Jina/vLLM's shape (``documents``) or TEI's (``texts``)."""

    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    tei: bool  # answer in TEI's shape: a list of {index, score, text?}


def parse_rerank(body: Mapping[str, Any], limit: int) -> RerankRequest:
    query = body.get("query")
    if not isinstance(query, str):
        problem = "is required" if query is None else f"must be a string, got {json_type(query)}"
        raise ApiError(400, f"'query' {problem}: the text to rank the documents against", param="query")
    _check_text(query, "query", "query")
    tei = body.get("documents") is None and body.get("texts") is not None
    field = "texts" if tei else "documents"
    raw = body.get(field)
    if isinstance(raw, list):  # Cohere v1 also takes {"text": ...} objects
        raw = [item["text"] if isinstance(item, dict) and isinstance(item.get("text"), str) else item for item in raw]
    documents = parse_texts(raw, field, max(limit - 1, 1))
    return RerankRequest(query=query, documents=documents, top_n=positive_int(body, "top_n"),
                         return_documents=flag(body, "return_text" if tei else "return_documents", False), tei=tei)
