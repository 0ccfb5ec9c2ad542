"""Tests: pure logic, the database and Redis layers, and the whole service end to end."""

import pytest

# The harness's asserts (a job submitted, a stack ready) report their values as the tests' own do.
pytest.register_assert_rewrite("harness")
