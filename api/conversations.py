"""Conversations: a server-kept history that each job in it is answered in the context of."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from sqlalchemy import select

from api.access import caller_id, visible
from api.openapi.declare import answer, documented, json_body
from api.request_validation import parse_json_object, validate
from api.schemas import ConversationRequest, ConversationView, is_resource_id
from models.errors import (
    ConversationNotFound,
    InvalidOption,
    MalformedJson,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from models.tables import Conversation, Turn

blueprint = Blueprint("conversations", __name__)


@blueprint.post("/v1/conversations")
@documented(
    {
        201: answer(
            "The conversation, without turns yet.",
            "ConversationView",
            headers={
                "Location": {
                    "description": "Path of the conversation, `/v1/conversations/{id}`.",
                    "schema": {"type": "string", "format": "uri-reference"},
                }
            },
        )
    },
    errors=(MalformedJson, PayloadTooLarge, UnsupportedMediaType, InvalidOption),
    body=json_body("ConversationRequest", required=False),
)
def create_conversation() -> Response:
    """Start a conversation.

    Starts an empty conversation, optionally with its own system prompt; submit prompts to it
    with `conversation_id`. The body may be empty (with any Content-Type) for a conversation
    without a system prompt of its own.
    """
    body = request.get_data(cache=False)
    payload: dict[str, object] = {}
    if body:  # only no body at all is none: whitespace is a body, and not JSON
        if request.mimetype != "application/json":
            raise UnsupportedMediaType("Send the conversation's fields as application/json.")
        payload = parse_json_object(body)
    settings = current_app.extensions["voicechat.settings"]
    shape = validate(ConversationRequest, payload, settings)
    conversation = Conversation(system=shape.system, api_key_id=caller_id())
    g.db.add(conversation)
    g.db.commit()
    response = jsonify(ConversationView.of(conversation, []).model_dump(mode="json"))
    response.status_code = 201
    response.headers["Location"] = url_for(
        "conversations.get_conversation", conversation_id=conversation.id
    )
    return response


@blueprint.get("/v1/conversations/<conversation_id>")
@documented(
    {200: answer("The conversation and all its turns.", "ConversationView")},
    errors=(ConversationNotFound,),
)
def get_conversation(conversation_id: str) -> Response:
    """Read a conversation.

    The conversation with its turns, oldest first (voice prompts as their transcripts).
    """
    conversation = (
        g.db.get(Conversation, conversation_id) if is_resource_id(conversation_id) else None
    )
    if conversation is None or not visible(conversation.api_key_id):
        raise ConversationNotFound(f"No conversation has the id {conversation_id!r}.")
    turns = list(
        g.db.scalars(select(Turn).where(Turn.conversation_id == conversation.id).order_by(Turn.id))
    )
    return jsonify(ConversationView.of(conversation, turns).model_dump(mode="json"))
