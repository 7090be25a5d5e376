"""The endpoint's HTTP contract: a FastAPI app whose request and response models are generated
from the served model's signature, so the OpenAPI document (``/<model>/docs``,
``/<model>/openapi.json``) is the endpoint's contract.

``ModelRouter`` (``ray_jobs.serve_router``) builds this app on its replica through Ray Serve's
FastAPI integration (``@serve.ingress()`` with ``__serve_build_asgi_app__``): the models are
made where they are used and never pickled. What the app guarantees, before a row reaches a
model:
- the body is read at most ``MAX_BODY_BYTES`` far: a declared Content-Length over it is
  refused before a byte is read, a streamed body as soon as it passes it (413);
- bytes that are not UTF-8, not JSON, nest too deep or hold an integer JSON cannot carry get
  a 400 that says so; a body that is JSON but not the model's rows gets a 422 naming each
  wrong place (``instances[3][7] (px0_7): Input should be a finite number``) and an example
  of a right body; more than ``MAX_ROWS`` rows a 413;
- every number is finite and within float32, every row has the model's columns, each of the
  right kind (numbers for numeric columns, a scalar for a text category).
Tested with Hypothesis over any bytes and any JSON in-process, and with Schemathesis over the
OpenAPI document against the real endpoint.
"""

import json
from collections.abc import Mapping
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_jobs.features import F32_MAX, NUMERIC, FeatureEncoder

MAX_ROWS = 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
#: A hint for routing only (StraightLine's request frequency): a client that names itself gets
#: its own rate, and a wrong name changes which tier answers it, never whether it is answered;
#: each client address has its own bound on requests in flight whatever it calls itself.
CALLER_HEADER = "x-slaflow-caller"

Number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
Category = Annotated[
    str | Annotated[int, Field(strict=True)] | Annotated[float, Field(strict=True)] | None,
    Field(description="a text category (an unseen one is encoded as out-of-vocabulary)"),
]
Label = Annotated[str | bool | int | float, Field(description="a class label, or a value")]


class Backend(Protocol):
    """What the app needs from whoever serves the model (``ModelRouter``)."""

    async def describe(self) -> dict[str, Any]: ...

    async def encoder(self) -> FeatureEncoder: ...

    async def predict(
        self, x: np.ndarray, caller: str, client: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]: ...

    def stats(self) -> dict[str, Any]: ...


def signature_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """A served version's signature (its ``info``) as the app's input: input columns with
    their kind, the task and the class labels."""
    encoder = FeatureEncoder.of_profile(
        {"encoding": info.get("encoding"), "feature_names": list(info["features"])}
    )
    return {
        "columns": [{"name": c["name"], "kind": c["kind"]} for c in encoder.to_dict()["columns"]],
        "task": str(info.get("task") or "classification"),
        "classes": [
            c if isinstance(c, str | int | float | bool) else str(c)
            for c in info.get("classes") or []
        ],
    }


def _row_type(signature: Mapping[str, Any] | None) -> Any:
    """One request row: a list in column order or an object by column name, each value of its
    column's kind. Without a signature: a list of numbers, or an object of scalars."""
    if not signature or not signature.get("columns"):
        list_row: Any = Annotated[list[Number], Field(min_length=1)]
        object_row: Any = dict[str, Number | Category]
    else:
        columns = signature["columns"]
        kinds = [Number if c["kind"] == NUMERIC else Category for c in columns]
        n = len(columns)
        if all(c["kind"] == NUMERIC for c in columns):
            list_row = Annotated[
                list[Number],
                Field(min_length=n, max_length=n, description=f"the {n} features in order"),
            ]
        else:
            list_row = Annotated[tuple[*kinds], Field(description="the columns in order")]
        object_row = create_model(
            "Row",
            __config__=ConfigDict(extra="ignore", populate_by_name=False),
            **{
                f"c{i}": (kind, Field(alias=c["name"]))
                for i, (c, kind) in enumerate(zip(columns, kinds, strict=True))
            },
        )

    def shape(v: Any) -> str | None:
        return "list" if isinstance(v, list | tuple) else "object" if isinstance(v, dict) else None

    return Annotated[
        Annotated[list_row, Tag("list")] | Annotated[object_row, Tag("object")],
        Discriminator(
            shape,
            custom_error_type="row_shape",
            custom_error_message="a row is a list of the model's columns in order, or an "
            "object of them by name",
        ),
    ]


def api_models(signature: Mapping[str, Any] | None) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request and response models of a model with this signature."""
    rows = Annotated[
        list[_row_type(signature)],  # type: ignore[misc]
        Field(min_length=1, max_length=MAX_ROWS, description=f"1 to {MAX_ROWS} rows"),
    ]
    request = create_model("PredictRequest", instances=(rows, ...))
    regression = bool(signature) and signature.get("task") == "regression"  # type: ignore[union-attr]
    response = create_model(
        "PredictResponse",
        predictions=(
            list[float] if regression else list[Label],
            Field(description="one per row: the value" if regression else "one label per row"),
        ),
        probabilities=(
            list[list[float]] | None,
            Field(None, description="per row, one per class (classification)"),
        ),
        model_name=(str, ...),
        model_version=(str, ...),
        route=(str, Field(description="the tier that answered (warm, batch, elastic)")),
    )
    return request, response


def example_body(signature: Mapping[str, Any] | None) -> str:
    columns = (signature or {}).get("columns") or [{"name": "x", "kind": NUMERIC}]
    if all(c["kind"] == NUMERIC for c in columns):
        values = ", ".join(["0.0"] * min(len(columns), 3)) + (", ..." if len(columns) > 3 else "")
        return '{"instances": [[' + values + "]]}"
    named = ", ".join(
        f'"{c["name"]}": {"0.0" if c["kind"] == NUMERIC else chr(34) + "..." + chr(34)}'
        for c in columns[:3]
    )
    return '{"instances": [{' + named + (", ..." if len(columns) > 3 else "") + "}]}"


def _where(loc: tuple[Any, ...], columns: list[dict[str, Any]]) -> str:
    parts = [p for p in loc if p not in ("body", "list", "object")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    if len(parts) == 3 and isinstance(parts[2], int) and parts[2] < len(columns):
        out += f" ({columns[parts[2]]['name']})"
    return out or "body"


def validation_answer(
    errors: list[dict[str, Any]], signature: Mapping[str, Any] | None
) -> JSONResponse:
    """A 422 naming every wrong place (the first five in ``error``), 413 for too many rows,
    400 for a body that is not JSON."""
    columns = list((signature or {}).get("columns") or [])
    if errors and errors[0].get("type") == "json_invalid":
        pos = errors[0]["loc"][-1]
        why = (errors[0].get("ctx") or {}).get("error", "")
        return JSONResponse(
            {
                "error": f"body is not valid JSON ({why} at char {pos}): send "
                f"{example_body(signature)}"
            },
            status_code=400,
        )
    if (
        errors
        and tuple(errors[0]["loc"]) == ("body",)
        and isinstance(errors[0].get("input"), bytes)
    ):
        return JSONResponse(
            {
                "error": f"body was not sent as JSON: send it with Content-Type: application/json, "
                f"e.g. {example_body(signature)}"
            },
            status_code=415,
        )
    status = 422
    if any(e["type"] == "too_long" and tuple(e["loc"]) == ("body", "instances") for e in errors):
        status = 413
    said = [f"{_where(tuple(e['loc']), columns)}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors[:50]]
    return JSONResponse(
        {
            "error": "; ".join(said) + more + f". A body looks like {example_body(signature)}",
            "detail": jsonable_encoder(detail),
        },
        status_code=status,
    )


class _BoundedRequest(Request):
    """A request whose body is read at most ``MAX_BODY_BYTES`` far and whose JSON errors are
    told apart (FastAPI's own answer to all of them is "There was an error parsing the body")."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise HTTPException(
                    413, f"body is {declared} bytes; at most {MAX_BODY_BYTES}: split the request"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise HTTPException(
                        413, f"body is over {MAX_BODY_BYTES} bytes: split the request"
                    )
                chunks.append(chunk)
            self._body = b"".join(chunks)
            if not self._body and "chunked" in self.headers.get("transfer-encoding", ""):
                # Ray Serve 2.60's proxy hands a FastAPI ingress a chunked body either whole
                # or empty (empty on every try on one VM, whole in CI on another): when it
                # is empty, say so rather than answer "field required".
                raise HTTPException(
                    411,
                    "send the body with a Content-Length: a chunked body reaches this "
                    "endpoint empty (Ray Serve's HTTP proxy)",
                )
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except json.JSONDecodeError:
                raise  # FastAPI answers it as a validation error with the position
            except UnicodeDecodeError as exc:
                raise HTTPException(
                    400, f"body is not UTF-8 text (byte {exc.start}): send JSON"
                ) from exc
            except ValueError as exc:  # an integer of more than 4,300 digits
                raise HTTPException(
                    400, f"body holds a number JSON cannot carry here ({str(exc)[:80]})"
                ) from exc
            except RecursionError as exc:
                raise HTTPException(
                    400, "body nests lists or objects too deep: rows are flat lists"
                ) from exc
        return self._json


class _ModelPathIsRoot:
    """``POST /<model>`` (no trailing slash, as clients call it) reaches the ``/`` route
    itself: Starlette would answer it with a 307 to ``/<model>/``, which curl does not follow
    and every other client pays a second round trip for."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ("", scope.get("root_path", "")):
            path = scope["path"] + "/"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class _BoundedRoute(APIRoute):
    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_BoundedRequest(request.scope, request.receive))

        return bounded


def build_api(backend: Backend, model_name: str, signature: Mapping[str, Any] | None) -> FastAPI:
    """The app of one model's endpoint (mounted by Serve at ``/<model>``)."""
    request_model, response_model = api_models(signature)
    app = FastAPI(
        title=f"{model_name} (slaflow)",
        description=(
            f"Predictions of the model `{model_name}` as its champion serves them. "
            f"`{CALLER_HEADER}` is a routing hint: it may change which tier answers, never "
            f"whether a request is answered."
        ),
        version="1",  # of this API; the served model's version is in every answer
        strict_content_type=False,  # a body without a Content-Type is read as JSON
    )
    app.router.route_class = _BoundedRoute
    app.add_middleware(_ModelPathIsRoot)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_answer(list(exc.errors()), signature)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    def _error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"error": {"type": "string"}},
                        "required": ["error"],
                    }
                }
            },
        }

    @app.post(
        "/",
        response_model=response_model,
        summary="Predict",
        responses={
            400: _error("the body is not JSON (or not UTF-8, or nests too deep)"),
            415: _error("the body was sent as another content type than JSON"),
            422: _error(
                "a row is not what the model takes (each wrong place named), or the model's "
                "answer for it is not finite (values far outside the training data)"
            ),
            411: _error("a chunked body: send it with a Content-Length"),
            413: _error(f"over {MAX_BODY_BYTES} bytes or {MAX_ROWS} rows: split the request"),
            429: _error("this client has too many requests in flight: retry later"),
            503: _error("overloaded: the tier's queue is full; retry after Retry-After"),
            504: _error("the model did not answer within the request timeout"),
        },
    )
    async def predict(
        request: Request,
        body: Annotated[request_model, Body()],  # type: ignore[valid-type]
        caller: Annotated[str | None, Header(alias=CALLER_HEADER, max_length=256)] = None,
    ) -> Any:
        encoder = await backend.encoder()
        rows = [
            r
            if isinstance(r, list | tuple)
            else r.model_dump(by_alias=True)
            if isinstance(r, BaseModel)
            else r
            for r in body.instances
        ]  # type: ignore[attr-defined]
        width = len(encoder.input_columns)
        if encoder.all_numeric and all(isinstance(r, list) and len(r) == width for r in rows):
            x = np.asarray(rows, dtype="float32")
        else:
            from ray_jobs.features import EncodingError

            try:
                x = encoder.encode_rows([list(r) if isinstance(r, tuple) else r for r in rows])
            except EncodingError as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
        client = request.client.host if request.client else "anonymous"
        status, answer, headers = await backend.predict(x, caller or client, client)
        return JSONResponse(answer, status_code=status, headers=headers or None)

    @app.get("/", summary="The served model: version, features, classes, routes, canary")
    async def describe() -> dict[str, Any]:
        return await backend.describe()

    @app.get("/-/stats", summary="Per-version counts and tail latency since routing changed")
    async def stats() -> dict[str, Any]:
        return backend.stats()

    return app
