"""Accounts: ``POST /register``, ``POST /login`` (JSON or OAuth2 password form), ``GET /me``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, Field, ValidationError
from starlette.datastructures import UploadFile

from gateway.rest.body import api_router, is_form_content_type, is_json_content_type
from gateway.rest.deps import CurrentUser, HasherDep, LoginLimiterDep, SettingsDep, UsersDep
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


def _token(settings: Settings, user_id: str, username: str) -> tuple[str, int]:
    ttl = settings.auth.token_ttl_s
    return tokens.issue(user_id, settings.auth.jwt_secret, ttl, username=username), ttl


@router.post(
    "/register", status_code=201, response_model=RegisterOut, summary="Create an account",
    description="Usernames are 3-32 of `A-Z a-z 0-9 _ . -`, unique regardless of case; passwords are 8 to 72 "
                "bytes in UTF-8. Answers with the user and an access token.",
    responses=error_responses(400, 409, 413, 415, 422, 503, s409="username already taken"),
)
async def register(body: RegisterIn, users: UsersDep, hasher: HasherDep, settings: SettingsDep) -> RegisterOut:
    if await users.name_taken(body.username):  # cheap early answer; the atomic claim below decides
        raise DomainError("username_taken", f"username {body.username!r} is already taken")
    user = await users.create(body.username, await hasher.hash(body.password))
    if user is None:
        raise DomainError("username_taken", f"username {body.username!r} is already taken")
    token, ttl = _token(settings, user.id, user.username)
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
    ip = request.client.host if request.client else "unknown"
    await limiter.attempt(body.username, ip)
    user = await users.by_name(body.username) if _USERNAME.fullmatch(body.username) else None
    ok = await hasher.verify(body.password, user.pw_hash if user else None)
    if user is None or not ok:
        raise DomainError("invalid_credentials", "invalid username or password")
    await limiter.succeeded(body.username, ip)
    token, ttl = _token(settings, user.id, user.username)
    return TokenOut(access_token=token, expires_in=ttl)


@router.get("/me", response_model=UserOut, summary="Who am I",
            responses=error_responses(401))
async def me(user_id: CurrentUser, users: UsersDep) -> UserOut:
    user = await users.get(user_id)
    if user is None:
        raise DomainError("invalid_token", "the token's user no longer exists")
    return UserOut(id=user.id, username=user.username, created_us=user.created_us)
