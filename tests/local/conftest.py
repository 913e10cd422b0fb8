"""Fixtures of the local-model tests."""

import pytest


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory):
    """The tiny model with room for a schema in its system message (its context is otherwise 256 tokens)."""
    from tiny import make_tiny_model

    from collab_core.local.loading import load_local_model

    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-long",
                                                max_position_embeddings=2048)))
