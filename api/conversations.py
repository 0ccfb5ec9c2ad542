"""Conversations: a server-kept history that each job in it is answered in the context of."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
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


def visible_conversation(conversation_id: str) -> Conversation | None:
    """The caller's conversation of this id; another key's is as unknown as none."""
    found = g.db.get(Conversation, conversation_id) if is_resource_id(conversation_id) else None
    return found if found is not None and visible(found.api_key_id) else None


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
def create_conversation() -> ResponseReturnValue:
    """Start a conversation.

    Submit prompts to it with `conversation_id`. The body may be empty (with any Content-Type)
    for a conversation without a system prompt of its own.
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
    view = ConversationView.of(conversation, []).model_dump(mode="json")
    location = url_for("conversations.get_conversation", conversation_id=conversation.id)
    return view, 201, {"Location": location}


@blueprint.get("/v1/conversations/<conversation_id>")
@documented(
    {200: answer("The conversation and all its turns.", "ConversationView")},
    errors=(ConversationNotFound,),
)
def get_conversation(conversation_id: str) -> Response:
    """Read a conversation.

    The conversation with its turns, oldest first (voice prompts as their transcripts).
    """
    conversation = visible_conversation(conversation_id)
    if conversation is None:
        raise ConversationNotFound(f"No conversation has the id {conversation_id!r}.")
    turns = list(
        g.db.scalars(select(Turn).where(Turn.conversation_id == conversation.id).order_by(Turn.id))
    )
    return jsonify(ConversationView.of(conversation, turns).model_dump(mode="json"))
