"""The inference backend of each collection's vectors.

- `collections.embed_backend`: the runtime and precision that computed the collection's
  vectors (`torch-fp16`, `torch-fp32`, `openvino-bf16`, `openvino-fp32`; see
  `pgrag/inference/weights.py`). Queries and later ingests of the collection embed with the same one,
  so its vectors never mix two numerics. Null until the first vectors are stored; collections
  that already have some were embedded with torch at the device's precision, recorded as
  `torch`.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE pgrag.collections ADD COLUMN embed_backend text;
COMMENT ON COLUMN pgrag.collections.embed_backend IS
    'Runtime and precision of the collection''s vectors: torch-fp16, torch-fp32, openvino-bf16 or openvino-fp32; torch: embedded before this was recorded (torch, fp16 on CUDA, fp32 on a CPU); null: no vectors yet. Queries and ingests of the collection use the same.';
UPDATE pgrag.collections c SET embed_backend = 'torch'
    WHERE EXISTS (SELECT 1 FROM pgrag.chunks WHERE collection_id = c.id);
"""

DOWNGRADE = r"""
ALTER TABLE pgrag.collections DROP COLUMN embed_backend;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
