"""Operator routes behind ``X-Admin-Token`` (``DUB_ADMIN_TOKEN``): tenants, keys, credits,
and an HTML overview at ``/admin``."""

from __future__ import annotations

import html

from fastapi import APIRouter, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.auth import AdminDep
from api.deps import DbDep
from api.schemas import ErrorBody
from dubcore import accounts
from dubcore.db import Job, Tenant, as_utc

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep], responses={
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)})


class TenantCreate(BaseModel):
    tenant_id: str = Field(examples=["acme"], pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str = Field("", max_length=200)
    minutes: int = Field(0, ge=0, le=10_000_000)


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    balance_minutes: int
    disabled: bool
    created_at: str


class TenantCreated(TenantOut):
    api_key: str = Field(description="Shown once: only its hash is stored.")


class KeyCreated(BaseModel):
    key_id: str
    api_key: str = Field(description="Shown once: only its hash is stored.")


class Grant(BaseModel):
    minutes: int = Field(ge=-10_000_000, le=10_000_000)
    note: str = Field("", max_length=200)


def _out(t: Tenant) -> TenantOut:
    return TenantOut(tenant_id=t.id, name=t.name, balance_minutes=t.balance_minutes,
                     disabled=t.disabled, created_at=as_utc(t.created_at).isoformat())


@router.get("/api/tenants", response_model=list[TenantOut])
def list_tenants(db: DbDep) -> list[TenantOut]:
    return [_out(t) for t in db.scalars(select(Tenant).order_by(Tenant.id))]


@router.post("/api/tenants", status_code=status.HTTP_201_CREATED,
             response_model=TenantCreated)
def create_tenant(body: TenantCreate, db: DbDep) -> TenantCreated:
    tenant, key = accounts.create_tenant(db, body.tenant_id, body.name, body.minutes)
    return TenantCreated(**_out(tenant).model_dump(), api_key=key)


@router.post("/api/tenants/{tenant_id}/keys", status_code=status.HTTP_201_CREATED,
             response_model=KeyCreated)
def create_key(tenant_id: str, db: DbDep) -> KeyCreated:
    row, key = accounts.issue_key(db, tenant_id, "admin")
    return KeyCreated(key_id=row.id, api_key=key)


@router.post("/api/keys/{key_id}/revoke", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: str, db: DbDep) -> None:
    accounts.revoke_key(db, key_id)


@router.post("/api/tenants/{tenant_id}/credits", response_model=TenantOut)
def grant_credits(tenant_id: str, body: Grant, db: DbDep) -> TenantOut:
    accounts.grant(db, tenant_id, body.minutes, body.note)
    tenant = db.get(Tenant, tenant_id)
    assert tenant is not None
    db.refresh(tenant)
    return _out(tenant)


@router.get("", response_class=HTMLResponse)
def overview(db: DbDep) -> HTMLResponse:
    """Tenants and the latest jobs, for operators (the Temporal Web UI has the rest)."""
    tenants = db.scalars(select(Tenant).order_by(Tenant.id)).all()
    recent = db.scalars(select(Job).order_by(Job.created_at.desc()).limit(50)).all()
    rows_t = "".join(f"<tr><td>{html.escape(t.id)}</td><td>{html.escape(t.name)}</td>"
                     f"<td>{t.balance_minutes}</td></tr>" for t in tenants)
    rows_j = "".join(f"<tr><td>{j.id}</td><td>{html.escape(j.tenant_id)}</td>"
                     f"<td>{html.escape(j.state)}</td>"
                     f"<td>{html.escape(','.join(j.target_languages))}</td>"
                     f"<td>{j.cost_minutes}</td><td>{as_utc(j.created_at):%Y-%m-%d %H:%M}</td>"
                     "</tr>" for j in recent)
    page = (
        "<!doctype html><title>OpenDub operators</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em}</style>"
        f"<h1>Tenants</h1><table><tr><th>id</th><th>name</th><th>minutes</th></tr>{rows_t}"
        f"</table><h1>Latest jobs</h1><table><tr><th>job</th><th>tenant</th><th>status</th>"
        f"<th>languages</th><th>minutes</th><th>created</th></tr>{rows_j}</table>")
    return HTMLResponse(page)
