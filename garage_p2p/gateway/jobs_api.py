"""``/garage/v1/jobs``: submit, list, follow, fetch and cancel batch jobs (what ``garage job`` calls)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.messages import error_body, error_info
from ..jobs.submitter import MAX_INPUT_BYTES, JobManager, JobRejected
from .bodies import BadRequest, read_json_body


def _error(status: int, message: str, code: str) -> JSONResponse:
    info = error_info(status, message, type="invalid_request_error", code=code)
    return JSONResponse(error_body(info), status_code=status)


def job_routes(jobs: Any) -> list[Route]:
    """``jobs`` is a callable returning the JobManager (it exists once the daemon has started)."""

    def manager() -> JobManager:
        return jobs()

    async def submit(request: Request) -> Response:
        try:
            body = await read_json_body(request, MAX_INPUT_BYTES)
        except BadRequest as exc:
            return JSONResponse(error_body(exc.info), status_code=exc.info.status)
        text = body.get("input")
        if not isinstance(text, str):
            return _error(400, "input must be the batch file's text (JSONL)", "invalid_input")
        try:
            shard_size = int(body.get("shard_size") or 50)
            max_providers = int(body["max_providers"]) if body.get("max_providers") else None
            deadline = float(body["deadline_s"]) if body.get("deadline_s") else None
        except (TypeError, ValueError):
            return _error(400, "shard_size, max_providers and deadline_s must be numbers", "invalid_parameter")
        model = body.get("model") if isinstance(body.get("model"), str) else None
        try:
            progress = await manager().submit(
                text, model=model, shard_size=shard_size, max_providers=max_providers, deadline_s=deadline
            )
        except JobRejected as exc:
            return _error(404 if "serves" in str(exc) else 400, str(exc), "job_rejected")
        return JSONResponse(progress, status_code=201)

    async def listing(request: Request) -> Response:
        return JSONResponse({"jobs": manager().list()})

    def job_id(request: Request) -> str:
        return request.path_params["job_id"]

    async def status(request: Request) -> Response:
        try:
            return JSONResponse(manager().progress(job_id(request)))
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")

    async def output(request: Request) -> Response:
        kind = request.query_params.get("kind", "results")
        try:
            lines = await manager().output(job_id(request), ok=kind != "errors")
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")
        return Response("".join(line + "\n" for line in lines), media_type="application/jsonl")

    async def cancel(request: Request) -> Response:
        try:
            return JSONResponse(await manager().cancel(job_id(request)))
        except KeyError:
            return _error(404, f"no job {job_id(request)} on this peer", "job_not_found")

    return [
        Route("/garage/v1/jobs", submit, methods=["POST"]),
        Route("/garage/v1/jobs", listing, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}", status, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}/output", output, methods=["GET"]),
        Route("/garage/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    ]
