"""`GET /v1/collections`: the collections a key may use, for any key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from pgrag.store import collections
from pgrag.store.schema import ApiKey

from ..auth import KEY_REFUSALS, requires

router = APIRouter(tags=["collections"], responses=KEY_REFUSALS)


class CollectionInfo(BaseModel):
    name: str
    model: str = Field(description="The embedding model: hub id or local path")
    dim: int
    chunk_size: int = Field(description="Tokens per chunk")
    chunk_overlap: int
    fusion: dict[str, Any] | None = Field(
        description="How hybrid searches fuse dense and lexical rankings (method, "
        "dense_weight); null: pgrag's default"
    )
    created_at: datetime


@router.get("/v1/collections")
def list_collections(
    key: Annotated[ApiKey, Depends(requires("search", "ask", "ingest"))],
) -> list[CollectionInfo]:
    """The collections this key may use, by name."""
    return [
        CollectionInfo.model_validate(c, from_attributes=True)
        for c in collections.list_collections()
        if key.sees(c.name)
    ]
