"""`POST /v1/search`: synchronous retrieval, for applications that bring their own LLM."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, StrictBool

from pgrag.inference.rerank import RerankerUnavailable
from pgrag.query.retrieval import retrieve
from pgrag.store.collections import get_collection
from pgrag.store.schema import ApiKey

from ..auth import KEY_REFUSALS, check_collection, requires
from ..validation import BODY_REFUSALS, CollectionName, Integer, Text, refusal

router = APIRouter(tags=["search"], responses=KEY_REFUSALS)


class SearchRequest(BaseModel):
    query: Text = Field(min_length=1, max_length=100_000)
    collection: CollectionName
    k: Integer = Field(10, ge=1, le=1000)
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        "hybrid",
        description="dense: HNSW; lexical: BM25; hybrid: both fused (the collection's fusion,"
        " z-scores weighted by the lists' agreement by default)",
    )
    filters: list[Text] = Field(
        default_factory=list,
        description="Metadata conditions KEY OP VALUE, ANDed: lang=en, year>=2020, tags~hr",
    )
    rerank: StrictBool = Field(False, description="Rescore the fused top N with the cross-encoder")


class PassageOut(BaseModel):
    chunk_id: int
    document_id: int
    external_id: str
    title: str | None
    text: str
    ord: int
    metadata: dict[str, Any]
    scores: dict[str, float] = Field(
        description="Score at each stage: dense, lexical, fused, rerank"
    )
    ranks: dict[str, int] = Field(default_factory=dict, description="1-based rank at each stage")


class SearchResponse(BaseModel):
    passages: list[PassageOut]
    timings: dict[str, float] = Field(description="Milliseconds: embed, recall, rerank")


@router.post(
    "/v1/search",
    responses={
        **BODY_REFUSALS,
        400: refusal("A malformed filter, or a body that is not JSON"),
        404: refusal("Unknown collection, or one this key may not use"),
        503: refusal("rerank was asked for and the reranker model cannot be loaded"),
    },
)
def search(
    body: SearchRequest, key: Annotated[ApiKey, Depends(requires("search"))]
) -> SearchResponse:
    """The k best passages for a query, with the score of each retrieval stage."""
    check_collection(key, body.collection)
    try:
        collection = get_collection(body.collection)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    try:
        found = retrieve(
            collection,
            body.query,
            k=body.k,
            mode=body.mode,
            filters=body.filters,
            rerank=body.rerank,
        )
    except RerankerUnavailable as e:
        raise HTTPException(503, str(e)) from None
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return SearchResponse(
        passages=[PassageOut.model_validate(p, from_attributes=True) for p in found.passages],
        timings=found.timings,
    )
