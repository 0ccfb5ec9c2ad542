"""Tests: pure logic, the database and Redis layers, and the whole service end to end."""
