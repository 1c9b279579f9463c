"""The viewer's HTTP interface (Starlette): the page, and a JSON/binary API over `CaseStore` and one `MaskEditor` per
tab (a session). Every request needs the viewer's token (`access`): 403 without it. Every fault in a request comes
back as JSON {"error": message} with a 4xx status; a bug comes back as a 500 with its message, and the server keeps
serving.

    GET  /api/cases                                 the data directory's cases
    POST /api/sessions            {"case": id}      open a case in a new session → its geometry and display ranges
    GET  /api/sessions/S                            embedding progress, clicks, mask size, Dice
    GET  /api/sessions/S/image?modality=&axis=&index=   uint16 plane (see `planes`), little-endian, rows × cols
    GET  /api/sessions/S/labels?axis=&index=        uint8 plane: bit 0 the mask, bit 1 the ground truth
    POST /api/sessions/S/click    {"x","y","z","positive"}  voxel indices
    POST /api/sessions/S/box      {"x0","y0","x1","y1","z"}  opposite corners on axial slice z, inclusive
    POST /api/sessions/S/propagate {"z"}   POST /api/sessions/S/undo   POST /api/sessions/S/clear {"z"?}
    POST /api/sessions/S/save                       write the mask as NIfTI → its path and download URL
    GET  /api/sessions/S/download                   the last saved mask
"""

from __future__ import annotations

import collections
import contextlib
import json
import secrets
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sam_jax.data.brats import save_prediction
from sam_jax.data.domains import MODALITIES
from sam_jax.errors import SamJaxError
from sam_jax.evaluation.mask_editing import MaskEditor
from sam_jax.outputs import check_output_file
from sam_jax.viewer.access import TokenGate
from sam_jax.viewer.cases import CaseStore, OpenCase, case_folder, mask_name
from sam_jax.viewer.errors import BadRequest, NotFound, SaveError
from sam_jax.viewer.planes import plane, quantise

PAGE = Path(__file__).parent / "page"
MAX_BODY = 16_384  # bytes: every request body is a few small JSON fields
MAX_SESSIONS = 64  # the least recently used tab's session goes when more are opened


class Session:
    """One tab's work on a case: its edits, and its case borrowed from the store for each request (read again when
    other cases have taken its place), never held between requests."""

    def __init__(self, store: CaseStore, case_id: str, segmenter):
        self.store, self.case_id = store, case_id
        self.editor = MaskEditor(segmenter, self.opened)
        self.saved: Path | None = None

    def opened(self) -> OpenCase:
        return self.store.open(self.case_id)

    def summary(self) -> dict:
        opened = self.store.in_memory(self.case_id)  # a progress poll does not read a dropped case again
        return dict(
            **(_DROPPED if opened is None else opened.progress()),
            clicks=self.editor.clicks(),
            boxes=self.editor.boxes(),
            voxels=self.editor.voxels(),
            dice=self.editor.dice(),
            saved=None if self.saved is None else str(self.saved),
        )


_DROPPED = dict(
    embedded=0,
    slices=0,
    warmed=False,
    error="other cases opened since took this one's place in memory (--cases_in_memory): it is read again at your "
    "next step",
)


class Viewer:
    def __init__(self, store: CaseStore, segmenter, output_dir: str | Path | None = None):
        self.store, self.segmenter = store, segmenter
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def session(self, request: Request) -> Session:
        key = request.path_params["session"]
        with self._lock:
            found = self.sessions.get(key)
            if found is not None:
                self.sessions.move_to_end(key)  # the least recently used session goes first
        if found is None:
            raise NotFound("no such session (expired or never opened): reopen the case")
        return found

    async def cases(self, request: Request):
        return JSONResponse(dict(data_dir=str(self.store.data_dir), cases=self.store.listing()))

    async def open_session(self, request: Request):
        case_id = _field(await _body(request), "case", str)
        opened = await run_in_threadpool(self.store.open, case_id)
        session_id = secrets.token_urlsafe(12)
        with self._lock:
            self.sessions[session_id] = Session(self.store, case_id, self.segmenter)
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        return JSONResponse(dict(session=session_id, **opened.info()), status_code=201)

    async def status(self, request: Request):
        session = self.session(request)
        return JSONResponse(await run_in_threadpool(session.summary))

    async def image(self, request: Request):
        session = self.session(request)
        modality = request.query_params.get("modality", MODALITIES[0])
        if modality not in MODALITIES:
            raise BadRequest(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        axis, index = _query(request, "axis", str), _query(request, "index")
        opened = await run_in_threadpool(session.opened)
        return _plane_response(quantise(plane(opened.case.images[modality], axis, index), opened.ranges[modality]))

    async def labels(self, request: Request):
        session = self.session(request)
        axis, index = _query(request, "axis", str), _query(request, "index")
        out = plane(session.editor.native_mask(), axis, index).astype("u1")
        tumour = (await run_in_threadpool(session.opened)).tumour
        if tumour is not None:
            out |= plane(tumour, axis, index).astype("u1") << 1
        return _plane_response(out)

    async def _change(self, request: Request, change) -> JSONResponse:
        """Run one edit in a worker thread; answer with the session's summary and the edit's own time."""
        session = self.session(request)
        body = await _body(request)

        def run():
            tick = time.perf_counter()
            result = change(session.editor, body)
            milliseconds = 1000 * (time.perf_counter() - tick)
            return dict(**session.summary(), result=result, milliseconds=round(milliseconds, 1))

        return JSONResponse(await run_in_threadpool(run))

    async def click(self, request: Request):
        def change(editor, body):
            positive = body.get("positive", True)
            if not isinstance(positive, bool):
                raise BadRequest(f"positive: expected true or false, got {positive!r}")
            editor.click(_field(body, "x"), _field(body, "y"), _field(body, "z"), positive)

        return await self._change(request, change)

    async def box(self, request: Request):
        def change(editor, body):
            editor.box(*(_field(body, name) for name in ("x0", "y0", "x1", "y1", "z")))

        return await self._change(request, change)

    async def propagate(self, request: Request):
        return await self._change(request, lambda editor, body: editor.propagate(_field(body, "z")))

    async def undo(self, request: Request):
        return await self._change(request, lambda editor, body: editor.undo())

    async def clear(self, request: Request):
        def change(editor, body):
            editor.clear() if body.get("z") is None else editor.clear_slice(_field(body, "z"))

        return await self._change(request, change)

    async def save(self, request: Request):
        session = self.session(request)
        case = (await run_in_threadpool(session.opened)).case
        folder = self.output_dir or case_folder(case)
        path = folder / mask_name(case)

        def write():
            if self.output_dir is not None:
                with contextlib.suppress(FileNotFoundError):  # the output folder alone is made again, not its parents
                    folder.mkdir(exist_ok=True)
            if not folder.is_dir():
                raise NotFound(f"cannot write {path}: the folder {folder} is gone (moved or deleted)")
            checked = check_output_file(path, "save", inputs=[*case.files.images.values(), case.files.seg])
            save_prediction(case, session.editor.native_mask(), checked)  # eval.predict's writer: the case's grid

        try:
            await run_in_threadpool(write)
        except SamJaxError:
            raise  # an OutputError names the path and why it cannot be written
        except OSError as e:
            raise SaveError(f"cannot write {path}: {e.strerror or e}") from None
        session.saved = path
        return JSONResponse(dict(path=str(path), download=f"/api/sessions/{request.path_params['session']}/download"))

    async def download(self, request: Request):
        session = self.session(request)
        if session.saved is None or not session.saved.is_file():
            raise NotFound("nothing saved yet in this session: save first")
        return FileResponse(session.saved, media_type="application/gzip", filename=session.saved.name)


def _plane_response(values) -> Response:
    rows, cols = values.shape
    return Response(
        values.tobytes(),
        media_type="application/octet-stream",
        headers={"X-Rows": str(rows), "X-Cols": str(cols), "Cache-Control": "no-store"},
    )


async def _body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"request body is not JSON: {e}") from None
    except RecursionError:  # the parser recurses per level: thousands of nested brackets fit in MAX_BODY
        raise BadRequest("request body is not JSON the viewer takes: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(body).__name__}")
    return body


def _field(body: dict, name: str, kind=int):
    if name not in body:
        raise BadRequest(f"missing field {name!r}")
    value = body[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"{name}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise BadRequest(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _query(request: Request, name: str, kind=int):
    if name not in request.query_params:
        raise BadRequest(f"missing query parameter {name!r}")
    value = request.query_params[name]
    try:
        return kind(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected {kind.__name__}") from None


async def _error(request: Request, error: Exception) -> JSONResponse:
    status = getattr(error, "status", 422) if isinstance(error, SamJaxError) else 500
    message = str(error) if isinstance(error, SamJaxError) else f"internal error: {type(error).__name__}: {error}"
    return JSONResponse(dict(error=message), status_code=status)


def build_app(store: CaseStore, segmenter, output_dir: str | Path | None = None, *, token: str) -> Starlette:
    """The application; every request must carry `token` (`access.new_token()`; the URL to print: `serving.url`)."""
    viewer = Viewer(store, segmenter, output_dir)
    session = "/api/sessions/{session}"
    routes = [
        Route("/", lambda request: FileResponse(PAGE / "index.html")),
        Route("/api/cases", viewer.cases),
        Route("/api/sessions", viewer.open_session, methods=["POST"]),
        Route(session, viewer.status),
        Route(f"{session}/image", viewer.image),
        Route(f"{session}/labels", viewer.labels),
        Route(f"{session}/click", viewer.click, methods=["POST"]),
        Route(f"{session}/box", viewer.box, methods=["POST"]),
        Route(f"{session}/propagate", viewer.propagate, methods=["POST"]),
        Route(f"{session}/undo", viewer.undo, methods=["POST"]),
        Route(f"{session}/clear", viewer.clear, methods=["POST"]),
        Route(f"{session}/save", viewer.save, methods=["POST"]),
        Route(f"{session}/download", viewer.download),
        Mount("/static", StaticFiles(directory=PAGE), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        store.close()  # background embedding threads stop between batches

    app = Starlette(
        routes=routes,
        exception_handlers={SamJaxError: _error, Exception: _error},
        middleware=[Middleware(TokenGate, token=token)],
        lifespan=lifespan,
        max_body_size=MAX_BODY,
    )
    app.state.viewer = viewer
    return app
