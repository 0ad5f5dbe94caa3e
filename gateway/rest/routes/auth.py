"""Accounts: ``POST /register``, ``POST /login`` (JSON or OAuth2 password form), ``GET /me``, ``POST /logout``,
``PUT /me/password``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.rest.body import api_router, is_form_content_type, is_json_content_type
from gateway.rest.deps import (
    CredentialsDep,
    CurrentUser,
    HasherDep,
    LoginLimiterDep,
    RegistrationLimiterDep,
    SessionDep,
    SettingsDep,
    UsersDep,
)
from gateway.rest.errors import error_responses
from gateway.rest.models import OutModel
from gateway.services.requests import StrictModel
from shared import tokens
from shared.errors import DomainError
from shared.settings import Settings

router = api_router(tags=["accounts"])

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
_USERNAME = re.compile(USERNAME_PATTERN)
PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores (bcrypt 5 refuses) anything longer


def _username(v: str) -> str:
    if not _USERNAME.fullmatch(v):
        raise ValueError("must be 3 to 32 characters among A-Z a-z 0-9 _ . -")
    return v


def _password(v: str) -> str:
    n = len(v.encode("utf-8"))
    if not PASSWORD_MIN_BYTES <= n <= PASSWORD_MAX_BYTES:
        raise ValueError(f"must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes in UTF-8 (got {n})")
    return v


def _login_password(v: str) -> str:
    if len(v.encode("utf-8")) > PASSWORD_MAX_BYTES:
        raise ValueError(f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8")
    return v


Username = Annotated[str, Field(max_length=32, json_schema_extra={"pattern": USERNAME_PATTERN},
                                examples=["alice"]), AfterValidator(_username)]
# The rule counts UTF-8 bytes, JSON Schema counts characters (1 to 4 bytes each): the document gives the
# character bounds every valid password meets (8 bytes are at least 2 characters, 72 bytes at most 72).
NewPassword = Annotated[str, Field(examples=["correct horse battery"], description="8 to 72 bytes in UTF-8",
                                   json_schema_extra={"minLength": -(-PASSWORD_MIN_BYTES // 4),
                                                      "maxLength": PASSWORD_MAX_BYTES}), AfterValidator(_password)]
LoginName = Annotated[str, Field(min_length=1, max_length=64, examples=["alice"])]
LoginPassword = Annotated[str, Field(min_length=1, description="at most 72 bytes in UTF-8",
                                     examples=["correct horse battery"]), AfterValidator(_login_password)]


class RegisterIn(StrictModel):
    username: Username
    password: NewPassword


class LoginIn(StrictModel):
    username: LoginName
    password: LoginPassword


class LoginForm(StrictModel):
    """The OAuth2 password grant as Swagger's Authorize button sends it (form-urlencoded)."""

    username: LoginName
    password: LoginPassword
    grant_type: Literal["password"] | None = None
    scope: str = Field(default="", max_length=256)
    client_id: str | None = Field(default=None, max_length=256)
    client_secret: str | None = Field(default=None, max_length=256)


class TokenOut(OutModel):
    access_token: str = Field(examples=["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzZjJjIn0.c2lnbmF0dXJl"])
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the token expires", examples=[86400])


class UserOut(OutModel):
    id: str = Field(examples=["3f2c9a7e0b8d4c1e9f6a5b4c3d2e1f00"])
    username: str = Field(examples=["alice"])
    created_us: int = Field(description="creation time, microseconds since the Unix epoch")


class RegisterOut(TokenOut):
    user: UserOut


def _token(settings: Settings, user_id: str, username: str, gen: int) -> tuple[str, int]:
    ttl = settings.auth.token_ttl_s
    return tokens.issue(user_id, settings.auth.jwt_secret, ttl, username=username, gen=gen), ttl


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/register", status_code=201, response_model=RegisterOut, summary="Create an account",
    description="Usernames are 3-32 of `A-Z a-z 0-9 _ . -`, unique regardless of case; passwords are 8 to 72 "
                "bytes in UTF-8. Answers with the user and an access token. Limited per client address and in "
                "all (429 with `Retry-After`); 503 with `Retry-After` when too many passwords are being hashed.",
    responses=error_responses(400, 409, 413, 415, 422, 429, 503, s409="username already taken",
                              s429="`rate_limited`: too many registrations from this address, or in all"),
)
async def register(request: Request, body: RegisterIn, users: UsersDep, hasher: HasherDep, settings: SettingsDep,
                   limiter: RegistrationLimiterDep) -> RegisterOut:
    await limiter.attempt(_ip(request))
    if await users.name_taken(body.username):  # cheap early answer; the atomic claim below decides
        raise DomainError("username_taken", f"username {body.username!r} is already taken")
    user = await users.create(body.username, await hasher.hash(body.password))
    if user is None:
        raise DomainError("username_taken", f"username {body.username!r} is already taken")
    token, ttl = _token(settings, user.id, user.username, 0)
    return RegisterOut(access_token=token, expires_in=ttl,
                       user=UserOut(id=user.id, username=user.username, created_us=user.created_us))


def _invalid(err: ValidationError) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()])


async def _login_body(request: Request) -> LoginIn | LoginForm:
    ctype = request.headers.get("content-type", "")
    try:
        if is_form_content_type(ctype):
            form = await request.form()
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile) or key in fields:
                    raise DomainError("validation_error", f"{key[:40]}: must be given once, as text")
                fields[key] = value
            return LoginForm.model_validate(fields)
        if is_json_content_type(ctype):
            if not await request.body():
                raise DomainError("validation_error", "body: field required")
            return LoginIn.model_validate(await request.json())
    except ValidationError as e:
        raise _invalid(e) from None
    raise DomainError("unsupported_media_type",
                   "send application/json or application/x-www-form-urlencoded (OAuth2 password form)")


_LOGIN_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": LoginIn.model_json_schema(),
                             "example": {"username": "alice", "password": "correct horse battery"}},
        "application/x-www-form-urlencoded": {"schema": LoginForm.model_json_schema()},
    },
}


@router.post(
    "/login", response_model=TokenOut, summary="Get an access token",
    description="JSON `{\"username\", \"password\"}` or the OAuth2 password form (Swagger's Authorize button). "
                "Unknown user and wrong password give the same 401. Failed attempts are limited per username "
                "and per client IP (429 with `Retry-After`).",
    responses=error_responses(400, 401, 413, 415, 422, 429, 503, s401="invalid username or password"),
    openapi_extra={"requestBody": _LOGIN_BODY},
)
async def login(request: Request, users: UsersDep, hasher: HasherDep, limiter: LoginLimiterDep,
                settings: SettingsDep) -> TokenOut:
    body = await _login_body(request)
    ip = _ip(request)
    await limiter.attempt(body.username, ip)
    user = await users.by_name(body.username) if _USERNAME.fullmatch(body.username) else None
    ok = await limiter.checked(body.username, ip, hasher, body.password, user.pw_hash if user else None)
    if user is None or not ok:
        raise DomainError("invalid_credentials", "invalid username or password")
    await limiter.succeeded(body.username, ip)
    token, ttl = _token(settings, user.id, user.username, user.token_gen)
    return TokenOut(access_token=token, expires_in=ttl)


@router.get("/me", response_model=UserOut, summary="Who am I",
            description="With an access token or an API key.", responses=error_responses(401, 503))
async def me(user_id: CurrentUser, users: UsersDep) -> UserOut:
    user = await users.get(user_id)
    if user is None:
        raise DomainError("invalid_token", "the token's user no longer exists")
    return UserOut(id=user.id, username=user.username, created_us=user.created_us)


@router.post("/logout", status_code=204, summary="Revoke the access token of this request",
             description="At once, on every gateway: the token then gets 401 on REST, and WebSockets authenticated "
                         "with it are closed (code 4001). Other tokens of the user keep working. An API key is "
                         "revoked with `DELETE /api-keys/{id}` instead (403 `session_required`).",
             responses=error_responses(401, 403, 503))
async def logout(p: SessionDep, credentials: CredentialsDep) -> Response:
    await credentials.logout(p)
    return Response(status_code=204)


class PasswordIn(StrictModel):
    current_password: LoginPassword
    new_password: NewPassword


@router.put("/me/password", response_model=TokenOut, summary="Change the password; revokes every older token",
            description="Every token issued before the change stops working at once, on every gateway (the one of "
                        "this request too): the answer carries a new one. API keys are not affected. A wrong "
                        "`current_password` is 403 `wrong_password` and counts as a failed login (429 past the "
                        "limit).",
            responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503,
                                      s403="`wrong_password`, or `session_required` (an API key)"))
async def change_password(request: Request, body: PasswordIn, p: SessionDep, users: UsersDep, hasher: HasherDep,
                          limiter: LoginLimiterDep, credentials: CredentialsDep, settings: SettingsDep) -> TokenOut:
    user = await users.get(p.user_id)
    if user is None:
        raise DomainError("invalid_token", "the token's user no longer exists")
    ip = _ip(request)
    await limiter.attempt(user.username, ip)
    if not await limiter.checked(user.username, ip, hasher, body.current_password, user.pw_hash):
        raise DomainError("wrong_password", "current_password is wrong")
    await limiter.succeeded(user.username, ip)
    gen = await credentials.set_password(user.id, await hasher.hash(body.new_password))
    token, ttl = _token(settings, user.id, user.username, gen)
    return TokenOut(access_token=token, expires_in=ttl)
