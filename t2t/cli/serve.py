"""t2t-serve: a trained model kept loaded, answering HTTP requests with JSON (FastAPI on
uvicorn). Requests that arrive together are decoded together, in one batch.

    POST /predict              the problem chosen with problem=NAME, or the checkpoint's only one
    POST /predict/<problem>    any problem of the checkpoint (a mixture's members)
    GET  /health               the problems served and how many requests and batches so far

Text goes as JSON {"input": "..."} (or a text/plain body); an image or audio file as a
multipart upload named "file" (curl -F file=@digit.wav). The answer is {"problem",
"prediction"}, with "formatted" (t2t-decode's line) for problems that format their
predictions and "predictions" (all of them) when decode.num_samples > 1. A bad request gets a
4xx status and {"detail": one line saying what was wrong}.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from t2t.cli.common import run_hydra
from t2t.errors import UserError, unknown_name

FILE_FIELD = "file"


class Batcher:
    """Decodes queued requests in batches on one thread: a request waits at most `wait_s` for
    others to join it, and those arriving while a batch decodes form the next one."""

    def __init__(self, decode: Callable[[int, list[Any]], list[Any]], max_batch_size: int,
                 wait_s: float):
        self.decode_batch, self.max_batch_size, self.wait_s = decode, max_batch_size, wait_s
        self.requests = self.batches = 0
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="t2t-serve-decoder", daemon=True).start()

    async def decode(self, index: int, loaded: Any) -> Any:
        """The predictions for one loaded input of problem `index`."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put((index, loaded, future))
        return await future

    def _take(self) -> list[tuple[int, Any, asyncio.Future]]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            for index in dict.fromkeys(i for i, _, _ in batch):  # a mixture: per problem
                group = [(loaded, future) for i, loaded, future in batch if i == index]
                try:
                    outputs = self.decode_batch(index, [loaded for loaded, _ in group])
                    results = [(output, None) for output in outputs]
                except Exception as error:  # the requests fail (500), the server goes on
                    traceback.print_exc()
                    results = [(None, error)] * len(group)
                self.requests += len(group)
                self.batches += 1
                for (_, future), (output, error) in zip(group, results, strict=True):
                    future.get_loop().call_soon_threadsafe(_settle, future, output, error)


def _settle(future: asyncio.Future, output: Any, error: Exception | None) -> None:
    if future.done():  # the client went away
        return
    if error is None:
        future.set_result(output)
    else:
        future.set_exception(error)


def make_app(model: Any, problems: list[Any], routes: dict[str, tuple[int, Any]],
             default: str | None, decode: Any, *, max_batch_size: int = 32,
             batch_wait_s: float = 0.005, max_upload_bytes: int = 20 << 20) -> FastAPI:
    """The FastAPI app. `routes` maps each name served to (the model's problem index, the
    problem that formats its predictions); `default` is the one POST /predict answers."""
    from t2t.cli.decode import decode_predictions
    from t2t.problem import FormatsPredictions, prediction_line

    batcher = Batcher(lambda index, loaded: decode_predictions(
        model, problems[index], index, loaded, decode), max_batch_size, batch_wait_s)
    max_positions = model.body.config.max_positions
    app = FastAPI(title="t2t-serve")

    def prepare(modality: Any, raw: Any, upload: str | None) -> Any:
        """The input as the model takes it; too long or unreadable: a 4xx."""
        try:
            encoded = modality.encode(raw)
            length = modality.length(encoded)
            if length > max_positions:
                raise HTTPException(413, f"the input is {length} positions long; this model "
                                         f"takes at most {max_positions}")
            return modality.load(encoded)
        except UserError as error:
            raise HTTPException(400, f"upload {upload}: {error}" if upload else str(error)
                                ) from None

    def too_large(size: int) -> None:
        raise HTTPException(413, f"the request is {size / 2**20:.1f} MB; t2t-serve takes at "
                                 f"most {max_upload_bytes / 2**20:g} MB (max_upload_mb)")

    async def raw_input(request: Request, modality: Any) -> tuple[Any, str | None]:
        """The request's input (text, or a file's bytes) and the uploaded file's name."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:  # refused before reading
            too_large(int(declared))
        body = await request.body()
        if len(body) > max_upload_bytes:
            too_large(len(body))
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if modality.file_suffixes:
            upload = (await request.form()).get(FILE_FIELD) if kind == "multipart/form-data" \
                else None
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, f"an {modality.kind} problem takes a file: send it as "
                                         f"a multipart upload named '{FILE_FIELD}' (curl -F "
                                         f"{FILE_FIELD}=@PATH)")
            return await upload.read(), upload.filename or FILE_FIELD
        if kind == "text/plain":
            try:
                return body.decode(), None
            except UnicodeDecodeError as error:
                raise HTTPException(400, f"the text is not UTF-8 ({error.reason} at byte "
                                         f"{error.start})") from None
        try:
            text = json.loads(body).get("input")
        except (ValueError, AttributeError):  # not JSON, or not an object
            text = None
        if not isinstance(text, str):
            raise HTTPException(400, 'a text problem takes JSON {"input": "..."} (or a '
                                     'text/plain body)')
        return text, None

    async def answer(name: str, request: Request) -> dict[str, Any]:
        index, formatter = routes[name]
        modality = problems[index].inputs
        raw, upload = await raw_input(request, modality)
        loaded = await run_in_threadpool(prepare, modality, raw, upload)
        try:
            predictions = await batcher.decode(index, loaded)
        except UserError as error:  # decode.* settings the decoder refused
            raise HTTPException(500, f"decoding failed: {error}") from None
        reply = {"problem": name, "prediction": predictions[0]}
        if isinstance(formatter, FormatsPredictions):
            reply["formatted"] = prediction_line(formatter, raw, predictions[0])
        if decode.num_samples > 1:
            reply["predictions"] = predictions
        return reply

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "problems": list(routes), "default": default,
                "requests": batcher.requests, "batches": batcher.batches}

    @app.post("/predict")
    async def predict_default(request: Request) -> dict[str, Any]:
        if default is None:
            raise HTTPException(400, f"this model serves {', '.join(routes)}: POST to "
                                     f"/predict/<problem>, or start t2t-serve with problem=NAME")
        return await answer(default, request)

    @app.post("/predict/{name}")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        if name not in routes:
            error = unknown_name("problem", name, routes, f"this model serves "
                                                          f"{', '.join(routes)}")
            raise HTTPException(404, str(error))
        return await answer(name, request)

    return app


def serve(config: Any) -> None:
    import uvicorn

    from t2t.cli.common import build_problem
    from t2t.inference import load_checkpoint, resolve_device, select_problem

    if config.max_batch_size < 1 or config.batch_wait_ms < 0:
        raise UserError(f"max_batch_size={config.max_batch_size}, batch_wait_ms="
                        f"{config.batch_wait_ms}: use a batch of 1 or more and a wait of 0 ms "
                        f"or more")
    model, problems = load_checkpoint(config.ckpt)
    model.to(resolve_device(config.device))
    routes: dict[str, tuple[int, Any]] = {p.name: (i, p) for i, p in enumerate(problems)}
    default = problems[0].name if len(problems) == 1 else None
    if config.get("problem") is not None:
        requested = build_problem(config.problem)
        index = select_problem(problems, requested.name, config.ckpt, requested)
        routes.setdefault(requested.name, (index, requested))  # a benchmark of a trained one
        default = requested.name
    app = make_app(model, problems, routes, default, config.decode,
                   max_batch_size=config.max_batch_size,
                   batch_wait_s=config.batch_wait_ms / 1000,
                   max_upload_bytes=int(config.max_upload_mb * 2**20))

    listening = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((config.host, config.port))
        listening.listen(2048)  # from now on connections wait for the server, none refused
    except OSError as error:
        raise UserError(f"cannot listen on {config.host}:{config.port} ({error.strerror}); "
                        f"pass another port=N (0: any free one)") from None
    host, port = listening.getsockname()[:2]
    paths = f"POST /predict ({default})" if default else "POST /predict/<problem>"
    print(f"t2t-serve: {', '.join(routes)} of {config.ckpt} on http://{host}:{port}: "
          f"{paths}, GET /health", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listening])
    sys.stdout.flush()


def main() -> None:
    run_hydra("t2t-serve", "serve", serve)


if __name__ == "__main__":
    main()
