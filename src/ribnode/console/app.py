"""The QA console: a read-only, server-rendered web app over the ledger (Starlette + Jinja2).

Mounted under ``/console`` on the node's HTTP service when ``console.enabled``. Pages: jobs
(filter, sort, page), a study (sources beside their outputs, thumbnails, provenance against
the ledger, deliveries), models, audit (filter, CSV and PS3.15 XML export); login and logout.
Every view of patient data is audited (PS3.15 "Query" for lists, "DICOM Instances Accessed"
for a study and its images); failed logins are audited and rate-limited. No JavaScript.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ribnode.config.settings import Settings
from ribnode.console import queries, thumbnails
from ribnode.console.audit_export import AuditSource, to_csv, to_xml
from ribnode.console.auth import Auth, Principal, same_token
from ribnode.console.provenance import read_provenance, source_is_synthetic
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

PREFIX = "/console"
SESSION_COOKIE = "ribnode_console"
LOGIN_CSRF_COOKIE = "ribnode_console_login"
MASK = "\u2022\u2022\u2022\u2022 (masked)"
MAX_FORM_BYTES = 16 * 1024
#: Security headers of every console response (OWASP secure headers; no script at all).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no URL (study UIDs) leaves the site; Origin still sent on our POSTs
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """ASGI middleware: the security headers on every response; HSTS over HTTPS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class ConsoleContext:
    """What the pages need, passed in (no globals)."""

    settings: Settings
    ledger: Ledger
    auth: Auth
    templates: Environment
    source: AuditSource

    @property
    def spool_dir(self) -> Path:
        return Path(self.settings.spool.directory)

    @property
    def staging_dir(self) -> Path:
        return Path(self.settings.export.staging_dir)


def _host(request: Request) -> str:
    return request.client.host if request.client else ""


def _parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _text(value: str | None, limit: int = 128) -> str | None:
    value = (value or "").strip()
    return value[:limit] or None


def job_filter(params: Any) -> queries.JobFilter:
    """The job list's filter from query parameters (unknown or malformed values ignored)."""
    state = _text(params.get("state"))
    sort = params.get("sort") or "created"
    return queries.JobFilter(
        state=state if state in queries.STAGES else None,
        created_from=_parse_date(params.get("from")),
        created_to=_parse_date(params.get("to")),
        study_uid=_text(params.get("study"), 64),
        accession=_text(params.get("accession"), 64),
        model_name=_text(params.get("model")),
        model_version=_text(params.get("version"), 64),
        weights_sha256=_text(params.get("weights"), 64),
        sort=sort if sort in queries.JOB_SORTS else "created",
        descending=params.get("dir", "desc") != "asc",
        page=max(1, _int(params.get("page"), 1)),
    )


def audit_filter(params: Any) -> queries.AuditFilter:
    event = _text(params.get("event"))
    outcome = params.get("outcome")
    return queries.AuditFilter(
        event=event if event in queries.EVENT_NAMES else None,
        outcome=_int(outcome, 0) if outcome in ("0", "4", "8", "12") else None,
        since=_parse_date(params.get("since")),
        until=_parse_date(params.get("until")),
        study_uid=_text(params.get("study"), 64),
        text=_text(params.get("q")),
        page=max(1, _int(params.get("page"), 1)),
    )


class Console:
    """The console's request handlers."""

    def __init__(self, ctx: ConsoleContext) -> None:
        self.ctx = ctx

    # -- helpers -----------------------------------------------------------------------------
    def _render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        template = self.ctx.templates.get_template(name)
        principal: Principal | None = request.scope.get("principal")
        session = request.scope.get("console_session")
        body = template.render(
            prefix=PREFIX,
            principal=principal,
            csrf=session.csrf if session is not None else None,
            mask=(lambda v: MASK if principal is not None and principal.masked and v else (v or "")),
            path=request.url.path,
            **values,
        )
        return HTMLResponse(body, status)

    async def _audit(self, request: Request, event: str, detail: str, **fields: Any) -> None:
        principal: Principal | None = request.scope.get("principal")
        user = f"{principal.name} ({principal.role})" if principal else "anonymous"
        await run_in_threadpool(queries.record, self.ctx.ledger, event, user, _host(request), detail, **fields)

    def _mask(self, request: Request) -> Callable[[str | None], str | None]:
        principal: Principal | None = request.scope.get("principal")
        if principal is not None and principal.masked:
            return lambda v: MASK if v else v
        return lambda v: v

    # -- authentication ----------------------------------------------------------------------
    def authenticated(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page: a session cookie or a bearer token, else the login page (HTML) or 401."""

        async def wrapped(request: Request) -> Response:
            authorization = request.headers.get("authorization", "")
            if authorization.lower().startswith("bearer "):
                host = _host(request)
                wait = self.ctx.auth.limiter.blocked(host, "bearer")
                principal = None if wait else self.ctx.auth.users.check_token(authorization[7:].strip())
                if principal is None:
                    if not wait:
                        self.ctx.auth.limiter.failed(host, "bearer")
                    await self._audit(
                        request,
                        queries.USER_AUTHENTICATION,
                        "bearer token refused" + (" (rate limited)" if wait else ""),
                        outcome=AuditOutcome.MINOR_FAILURE,
                    )
                    return PlainTextResponse("401 Unauthorized", 401, headers={"WWW-Authenticate": "Bearer"})
                request.scope["principal"] = principal
                return await handler(request)
            session = self.ctx.auth.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", 303)
            request.scope["principal"] = session.principal
            request.scope["console_session"] = session
            return await handler(request)

        return wrapped

    async def _form(self, request: Request) -> dict[str, str]:
        """An application/x-www-form-urlencoded body (small; no multipart)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return {}
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def _same_origin(self, request: Request) -> bool:
        """An Origin header, when sent, names this site (a cross-site POST is refused)."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return origin.rstrip("/") == f"{request.url.scheme}://{request.url.netloc}"

    def _cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            secure=self.ctx.settings.console.secure_cookies,
            httponly=True,
            samesite="strict",
        )

    async def login_page(self, request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        response = self._render(
            request, "login.html", login_csrf=token, next=_safe_next(request.query_params.get("next"))
        )
        self._cookie(response, LOGIN_CSRF_COOKIE, token, 3600)
        return response

    async def login(self, request: Request) -> Response:
        form = await self._form(request)
        host, name = _host(request), form.get("username", "")[:64]
        if not self._same_origin(request) or not same_token(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
            await self._audit(
                request,
                str(AuditEventName.SECURITY_ALERT),
                f"login form without a valid CSRF token ({name!r})",
                outcome=AuditOutcome.MINOR_FAILURE,
            )
            return PlainTextResponse(
                "403 Forbidden: the form's CSRF token is missing or wrong; reload the login page", 403
            )
        wait = self.ctx.auth.limiter.blocked(host, name)
        if wait:
            await self._audit(
                request,
                str(AuditEventName.SECURITY_ALERT),
                f"login of {name!r} refused: too many failed logins (rate limited)",
                outcome=AuditOutcome.SERIOUS_FAILURE,
            )
            response = self._render(
                request,
                "login.html",
                429,
                login_csrf=form.get("csrf"),
                next=_safe_next(form.get("next")),
                error=f"Too many failed logins. Try again in {int(wait) + 1} seconds.",
            )
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        principal = await run_in_threadpool(self.ctx.auth.users.check_password, name, form.get("password", ""))
        if principal is None:
            self.ctx.auth.limiter.failed(host, name)
            await self._audit(
                request,
                queries.USER_AUTHENTICATION,
                f"login failed for {name!r}: wrong user name or password",
                outcome=AuditOutcome.MINOR_FAILURE,
            )
            return self._render(
                request,
                "login.html",
                401,
                login_csrf=form.get("csrf"),
                next=_safe_next(form.get("next")),
                error="Wrong user name or password.",
            )
        self.ctx.auth.limiter.succeeded(host, name)
        session_id, _ = self.ctx.auth.sessions.create(principal)
        request.scope["principal"] = principal
        await self._audit(request, queries.USER_AUTHENTICATION, "login")
        redirect = RedirectResponse(_safe_next(form.get("next")) or f"{PREFIX}/jobs", 303)
        self._cookie(redirect, SESSION_COOKIE, session_id, int(self.ctx.settings.console.session_s))
        redirect.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return redirect

    async def logout(self, request: Request) -> Response:
        form = await self._form(request)
        session = request.scope.get("console_session")
        if session is None or not self._same_origin(request) or not same_token(session.csrf, form.get("csrf")):
            await self._audit(
                request,
                str(AuditEventName.SECURITY_ALERT),
                "logout without a valid CSRF token",
                outcome=AuditOutcome.MINOR_FAILURE,
            )
            return PlainTextResponse("403 Forbidden: CSRF token missing or wrong", 403)
        self.ctx.auth.sessions.end(request.cookies.get(SESSION_COOKIE))
        await self._audit(request, queries.USER_AUTHENTICATION, "logout")
        response = RedirectResponse(f"{PREFIX}/login", 303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- pages -------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/jobs", 303)

    async def jobs(self, request: Request) -> Response:
        f = job_filter(request.query_params)
        page = await run_in_threadpool(queries.list_jobs, self.ctx.ledger, f, self.ctx.settings.console.page_size)
        await self._audit(request, queries.QUERY, f"jobs page {page.page}: {f.describe()} ({page.total} found)")
        params = {k: v for k, v in request.query_params.items() if v and k != "page"}
        return self._render(
            request,
            "jobs.html",
            page=page,
            f=f,
            params=params,
            states=queries.STAGES,
            stages=queries.STAGES[:4],
            link=_link,
        )

    async def study(self, request: Request) -> Response:
        uid = request.path_params["uid"]
        view = await run_in_threadpool(
            queries.study_view, self.ctx.ledger, uid, self.ctx.spool_dir, self.ctx.staging_dir
        )
        if view is None:
            return self._render(request, "missing.html", 404, what=f"study {uid}")
        provenance = await run_in_threadpool(self._provenance, view)
        outputs = sum(len(s.outputs) for s in view.sources)
        classes = " ".join(sorted({s.sop_class_uid for s in view.sources}))
        await self._audit(
            request,
            str(AuditEventName.INSTANCES_ACCESSED),
            f"viewed study page: {len(view.sources)} source(s), {outputs} output(s)",
            study_uid=view.study_uid,
            instance_count=len(view.sources) + outputs,
            sop_class_uids=classes or None,
        )
        return self._render(request, "study.html", view=view, provenance=provenance)

    def _provenance(self, view: queries.StudyView) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for source in view.sources:
            synthetic = source_is_synthetic(source.path) if source.outputs else None
            for output in source.outputs:
                out[output.sop_instance_uid] = read_provenance(output, view.study_uid, synthetic)
        return out

    async def thumbnail(self, request: Request) -> Response:
        uid, kind = request.path_params["uid"], request.path_params["kind"]
        if kind not in thumbnails.KINDS:
            return PlainTextResponse("404 Not Found", 404)
        pair = await run_in_threadpool(
            queries.output_object, self.ctx.ledger, uid, self.ctx.staging_dir, self.ctx.spool_dir
        )
        if pair is None or pair.output.kind != "sc":
            return PlainTextResponse("404 Not Found: no Secondary Capture with this SOP Instance UID", 404)
        try:
            png = await run_in_threadpool(thumbnails.render, pair.source_path, pair.output.path, kind)
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("thumbnail %s of %s: %s", kind, uid, exc)
            return PlainTextResponse(f"404 Not Found: the stored objects cannot be rendered ({exc})", 404)
        await self._audit(
            request,
            str(AuditEventName.INSTANCES_ACCESSED),
            f"viewed {kind} thumbnail of SC {uid}",
            study_uid=pair.study_uid,
            instance_count=1 if kind == "original" else 2,
        )
        return Response(png, media_type="image/png")

    async def models(self, request: Request) -> Response:
        rows = await run_in_threadpool(queries.models_used, self.ctx.ledger)
        return self._render(request, "models.html", rows=rows, card=self._card_url)

    def _card_url(self, model_name: str) -> str:
        name = model_name.removeprefix("ribnode ").replace(" ", "-")
        return self.ctx.settings.console.model_card_url.format(name=name)

    async def audit(self, request: Request) -> Response:
        f = audit_filter(request.query_params)
        page = await run_in_threadpool(queries.list_audit, self.ctx.ledger, f, self.ctx.settings.console.page_size)
        await self._audit(request, queries.QUERY, f"audit page {page.page}: {f.describe()} ({page.total} found)")
        params = {k: v for k, v in request.query_params.items() if v and k != "page"}
        return self._render(
            request,
            "audit.html",
            page=page,
            f=f,
            params=params,
            events=queries.EVENT_NAMES,
            console_user=queries.console_user,
            link=_link,
        )

    async def audit_export(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("csv", "xml"):
            return PlainTextResponse("404 Not Found: the audit exports are audit.csv and audit.xml", 404)
        f = audit_filter(request.query_params)
        rows = await run_in_threadpool(queries.all_audit, self.ctx.ledger, f)
        await self._audit(request, queries.QUERY, f"audit export {kind}: {f.describe()} ({len(rows)} events)")
        mask = self._mask(request)
        name = f"ribnode-audit.{kind}"
        disposition = {"content-disposition": f'attachment; filename="{name}"'}
        if kind == "csv":
            return Response(to_csv(rows, mask), media_type="text/csv; charset=utf-8", headers=disposition)
        return Response(to_xml(rows, self.ctx.source, mask), media_type="application/xml", headers=disposition)


def _safe_next(target: str | None) -> str | None:
    """A redirect target after login: a console path only (no open redirect)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _link(params: dict[str, str], **changes: Any) -> str:
    """A query string: ``params`` with ``changes`` (None removes a key)."""
    merged = {**params, **{k: str(v) for k, v in changes.items() if v is not None}}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
    return "?" + urlencode(merged)


def templates() -> Environment:
    """The console's Jinja2 templates (package data), HTML-escaped."""
    env = Environment(
        loader=PackageLoader("ribnode.console", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = lambda value: f"{value:%Y-%m-%d %H:%M:%S}Z" if value else ""
    env.filters["seconds"] = lambda value: f"{value:.1f} s" if value is not None else ""
    return env


def make_console(settings: Settings, ledger: Ledger) -> ASGIApp:
    """The console's ASGI app, to mount at ``/console`` (with its security headers)."""
    ctx = ConsoleContext(
        settings,
        ledger,
        Auth.from_settings(settings.console),
        templates(),
        AuditSource(settings.outputs.node_id, settings.listener.ae_title),
    )
    console = Console(ctx)
    page = console.authenticated
    static = Path(__file__).with_name("static")
    app = Starlette(
        routes=[
            Route("/", console.index, methods=["GET"]),
            Route("/login", console.login_page, methods=["GET"]),
            Route("/login", console.login, methods=["POST"]),
            Route("/logout", page(console.logout), methods=["POST"]),
            Route("/jobs", page(console.jobs), methods=["GET"]),
            Route("/studies/{uid}", page(console.study), methods=["GET"]),
            Route("/thumbnails/{uid}/{kind}.png", page(console.thumbnail), methods=["GET"]),
            Route("/models", page(console.models), methods=["GET"]),
            Route("/audit", page(console.audit), methods=["GET"]),
            Route("/audit.{kind:str}", page(console.audit_export), methods=["GET"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ]
    )
    return SecurityHeaders(app)
