"""Conversations: the history fitted to the window, and long chats on the real service."""
