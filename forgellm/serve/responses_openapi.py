"""What /v1/responses answers, as models for /openapi.json only (responses.py builds plain dicts)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ResponseOutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class ResponseOutputMessage(BaseModel):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[ResponseOutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    """A response: in progress (in the first stream events) or finished, its answer in `output`."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[ResponseOutputMessage]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str
    tools: list[Any]
    truncation: str
    usage: ResponseUsage | None
    metadata: dict[str, str]
    user: str | None


class ResponseStreamEvent(BaseModel):
    """One typed event of a streamed response (response.created ... response.completed, or error);
    its other fields depend on `type`, as in OpenAI's Responses streaming reference."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
