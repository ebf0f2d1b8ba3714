"""API keys: a hash per key with its scopes and collections; questions record who asked.

The reader role (pgrag_reader) gets no access to the key table: its default privileges
would grant SELECT on every new table of the schema, so this one is revoked explicitly.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE pgrag.api_keys (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    prefix          text NOT NULL UNIQUE,
    hash            bytea NOT NULL,
    scopes          text[] NOT NULL
                    CHECK (scopes <@ ARRAY['search', 'ask', 'ingest', 'admin'] AND scopes <> '{}'),
    collections     text[],
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE UNIQUE INDEX api_keys_live_name_idx ON pgrag.api_keys (name) WHERE revoked_at IS NULL;
COMMENT ON TABLE pgrag.api_keys IS 'Keys of the HTTP API (pgrag keys create/list/revoke). Only a SHA-256 of each key is kept; the key itself is printed once, when it is created.';
COMMENT ON COLUMN pgrag.api_keys.id IS 'Key id.';
COMMENT ON COLUMN pgrag.api_keys.name IS 'Name given at creation; unique among live keys.';
COMMENT ON COLUMN pgrag.api_keys.prefix IS 'The key''s public part (pgrag_<prefix>_<secret>), to find its row; not a secret.';
COMMENT ON COLUMN pgrag.api_keys.hash IS 'SHA-256 of the whole key, compared in constant time.';
COMMENT ON COLUMN pgrag.api_keys.scopes IS 'What the key may do: search, ask, ingest; admin may do all of them, in every collection, and read every question.';
COMMENT ON COLUMN pgrag.api_keys.collections IS 'Collections the key may use; null: all.';
COMMENT ON COLUMN pgrag.api_keys.created_at IS 'When the key was created.';
COMMENT ON COLUMN pgrag.api_keys.last_used_at IS 'Last accepted request (updated at most once a minute).';
COMMENT ON COLUMN pgrag.api_keys.revoked_at IS 'When the key was revoked; a revoked key is refused.';
REVOKE ALL ON pgrag.api_keys FROM pgrag_reader;

ALTER TABLE pgrag.queries ADD COLUMN api_key_id bigint REFERENCES pgrag.api_keys(id) ON DELETE SET NULL;
COMMENT ON COLUMN pgrag.queries.api_key_id IS 'Key that asked the question over the API (null: asked locally); only it, or an admin key, reads the answer.';
"""

DOWNGRADE = """
ALTER TABLE pgrag.queries DROP COLUMN api_key_id;
DROP TABLE pgrag.api_keys;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
